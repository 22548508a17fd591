"""``vitquant compare``: several recipes or schemes on one model and one set of images, in one process,
written out as a markdown and a self-contained HTML report with figures."""

from vitquant.compare.plan import Variant, parse_variant, plan_variants
from vitquant.compare.render import write_report
from vitquant.compare.session import CompareJob, run_compare

__all__ = ["CompareJob", "Variant", "parse_variant", "plan_variants", "run_compare", "write_report"]
