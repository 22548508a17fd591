"""How quantizer parameters are found from calibration data (the observer side)."""

from vitquant.search.bitlog2_divisor import brute_force_divisor, fit_bitlog2, optimal_divisor
from vitquant.search.log_sqrt2_delta import fit_log_sqrt2
from vitquant.search.percentile_mse import PERCENTILES, fit_uniform, search_uniform_params
from vitquant.search.quantiles import row_quantiles

__all__ = [
    "PERCENTILES",
    "brute_force_divisor",
    "fit_bitlog2",
    "fit_log_sqrt2",
    "fit_uniform",
    "optimal_divisor",
    "row_quantiles",
    "search_uniform_params",
]
