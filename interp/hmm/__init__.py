"""Hidden Markov models: the object, named processes, sampling, exact filtering and smoothing, loss bounds."""

from interp.hmm.core import HMM, EmissionForm, stationary_distribution
from interp.hmm.filtering import (
    FilterResult,
    beliefs,
    filter_scan,
    filter_sequential,
    forward_filter,
    log_likelihood,
    next_token_probs,
)
from interp.hmm.ghmm import GHMM, word_probabilities  # also registers the GHMM processes
from interp.hmm.losses import Estimate, OptimalLoss, entropy_rate, optimal_loss, predictive_entropy, unigram_loss
from interp.hmm.msp import MixedStatePresentation, mixed_state_presentation
from interp.hmm.processes import get_process, list_processes, register
from interp.hmm.sampling import sample
from interp.hmm.smoothing import ExpectedCounts, LogitGradient, expected_counts, log_likelihood_gradient

__all__ = [
    "HMM", "EmissionForm", "stationary_distribution",
    "GHMM", "word_probabilities",
    "FilterResult", "beliefs", "filter_scan", "filter_sequential", "forward_filter", "log_likelihood",
    "next_token_probs",
    "OptimalLoss", "Estimate", "entropy_rate", "optimal_loss", "predictive_entropy", "unigram_loss",
    "MixedStatePresentation", "mixed_state_presentation",
    "get_process", "list_processes", "register", "sample",
    "ExpectedCounts", "LogitGradient", "expected_counts", "log_likelihood_gradient",
]
