"""The compiled fast executor against the strict one on the ``w8a8-mixed`` test program, as a script.

``tests/integer/test_fast.py::test_compiled_run_equals_the_strict_run`` checks what this writes. With an
empty compile cache, inductor's C++ compilation of the program's chains takes minutes, so
``tests/conftest.py`` starts this script when the session collects that test, and the rest of
the suite runs beside it. Writes JSON to ``argv[1]``: ``available`` (torch.compile works here),
``equal`` (the compiled run's integers are the strict run's), ``padded_equal`` (a smaller batch, padded,
not compiled again), ``recompiled`` and ``compile_seconds``.

    python tests/integer/compiled_run.py OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # integer_cases, conftest

import torch  # noqa: E402

torch.set_num_threads(1)  # beside the test suite: leave it the other core
torch._inductor.config.compile_threads = 1  # one compiler process at a time (it defaults to one per CPU)


def compile_works() -> bool:
    try:
        return bool(torch.compile(lambda t: t * 2 + 1, fullgraph=True)(torch.ones(3)).eq(3).all())
    except Exception:  # no C++ compiler or no inductor backend: the compiled path cannot run here
        return False


def main(out: str) -> int:
    result: dict[str, object] = {"available": compile_works()}
    if result["available"]:
        from integer_cases import calibrated

        from vitquant.integer.execute import IntegerModel

        _, _, program, _, images = calibrated("w8a8-mixed")
        strict = IntegerModel(program).run(images)
        model = IntegerModel(program, gemm="float", compile=True)
        result["equal"] = torch.equal(model.run(images), strict)
        result["compile_seconds"] = model.compile_seconds
        seconds = model.compile_seconds
        result["padded_equal"] = torch.equal(model.run(images[:5]), strict[:5])
        result["recompiled"] = model.compile_seconds != seconds
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
