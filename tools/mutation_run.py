"""Named mutations: break one promise at a time in a scratch copy of the checkout, run the tests that claim to
guard it, and report whether they noticed (killed) or not (survived).

    .venv/bin/python tools/mutation_run.py              # every mutation (about 10 minutes on 2 busy cores)
    .venv/bin/python tools/mutation_run.py digest ddp   # only those whose name contains one of the words
    .venv/bin/python tools/mutation_run.py --list

Each mutation replaces one exact piece of source text; a mutation whose text is no longer in the source is
reported as "stale" (and the run fails), so the list cannot silently rot when the code moves. Before the
mutations, the same tests run unmutated: a mutation only counts as killed when the clean copy passes.
The kill rate and the list are in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file to mutate, relative to the repository root
    old: str  # exact source text to replace (must occur exactly once)
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must notice


def _m(name: str, path: str, old: str, new: str, *tests: str) -> Mutation:
    return Mutation(name, path, old, new, tests)


DIGEST = "tests/data/test_source_digest.py"
MUTATIONS = [
    _m("gate-never-refuses", "cvpipe/evaluation/baseline.py",
       "    if hi < -max_ap_drop:\n", "    if False:\n",
       "tests/evaluation/test_model_eval_step.py::test_gate_refuses_a_significant_drop"),
    _m("gate-refuses-on-point-estimate", "cvpipe/evaluation/baseline.py",
       "    if hi < -max_ap_drop:\n", "    if boot['delta'] < -max_ap_drop:\n",
       "tests/evaluation"),
    _m("decoder-no-pixel-limit", "cvpipe/vision/images.py",
       "    if w * h > max_pixels:", "    if False:",
       "tests/serving/test_images.py"),
    _m("decoder-accepts-empty", "cvpipe/vision/images.py",
       '        raise ImageDecodeError("empty image: no bytes")', "        pass",
       "tests/serving/test_images.py", "tests/production/test_fuzz_decoder.py"),
    _m("digest-size-and-mtime", "cvpipe/data/sources.py",
       "    files = {rel: file_digest(path / rel) for rel in folder_files(path)}",
       "    files = {rel: f'{(path / rel).stat().st_size}-{(path / rel).stat().st_mtime_ns}'"
       " for rel in folder_files(path)}", DIGEST),
    _m("digest-includes-mtime", "cvpipe/data/sources.py",
       "    files = {rel: file_digest(path / rel) for rel in folder_files(path)}",
       "    files = {rel: file_digest(path / rel) + str((path / rel).stat().st_mtime_ns)"
       " for rel in folder_files(path)}", DIGEST),
    _m("digest-archive-by-size", "cvpipe/data/sources.py",
       "        return SourceDigest(str(path.resolve()), file_digest(path), 1, local=path)",
       "        return SourceDigest(str(path.resolve()), str(path.stat().st_size), 1, local=path)", DIGEST),
    _m("data-link-out-unlisted", "cvpipe/data/formats.py",
       "    for link in _links_out(root):\n", "    for link in []:\n",
       "tests/data/test_attacks.py"),
    _m("data-all-unsafe-unexplained", "cvpipe/data/load.py",
       "    if not raw.images:\n        raise ValueError(_no_images_message(raw))\n", "",
       "tests/data/test_attacks.py"),
    _m("missing-data-skips", "tests/coco_data.py",
       '        pytest.fail(f"test data missing', '        pytest.skip(f"test data missing',
       "tests/data/test_coco_sample.py::test_missing_test_data_fails_on_every_machine"),
    _m("swap-ignores-run-id", "cvpipe/serving/swap.py",
       "    if model.run_id != store_run_id:", "    if False:",
       "tests/production/test_hot_swap.py"),
    _m("swap-ignores-contract", "cvpipe/serving/swap.py",
       "        if diffs:\n            raise SwapRefused", "        if False:\n            raise SwapRefused",
       "tests/production/test_hot_swap.py"),
    _m("swap-skips-reference-check", "cvpipe/serving/swap.py",
       "    if not ok:\n        raise SwapRefused(f\"check on the packed test image",
       "    if False:\n        raise SwapRefused(f\"check on the packed test image",
       "tests/production/test_hot_swap.py"),
    _m("int8-budget-ignored", "cvpipe/export/variants.py",
       "    if drop > budget.max_ap_drop:", "    if drop > budget.max_ap_drop + 100:",
       "tests/export/test_variants.py"),
    _m("int8-only-head-in-float", "cvpipe/export/variants.py",
       '    names = set(head_output_convs(proto)) if "head" in groups else set()\n    if "stem" in groups',
       '    names = set(head_output_convs(proto)) if "head" in groups else set()\n    if False',
       "tests/production/test_quantize.py"),
    _m("ddp-never-synchronises", "cvpipe/training/trainer.py",
       "            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)",
       "            self.net = self.model",
       "tests/training/test_distributed.py::test_torchrun_two_cpu_processes"),
]


def _copy_checkout(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files, as the working tree has them now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _pytest(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, float, str]:
    """(exit code, seconds, the first failure line) of the tests run in the copy."""
    env = dict(os.environ, PYTHONPATH=str(copy), BENTOML_DO_NOT_TRACK="true")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]  # default markers
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - t0, "timeout"  # a hang is noticed too, but say so
    why = next((line for line in res.stdout.splitlines() if line.startswith("E ")), "")
    return res.returncode, time.perf_counter() - t0, why.removeprefix("E").strip()[:100]


def run(mutations: list[Mutation], timeout: int) -> int:
    with tempfile.TemporaryDirectory(prefix="cvpipe-mutants-") as tmp:
        copy = Path(tmp)
        _copy_checkout(copy)
        tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
        rc, secs, why = _pytest(copy, tests, timeout * 2)
        print(f"clean copy: {'pass' if rc == 0 else f'FAIL rc={rc}'} ({secs:.0f} s, {len(tests)} test targets)")
        if rc != 0:
            print(f"  {why}")
            return 2
        killed = stale = 0
        for m in mutations:
            target = copy / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                stale += 1
                print(f"  stale     {m.name}: its source text is not in {m.path} exactly once")
                continue
            target.write_text(original.replace(m.old, m.new))
            try:
                rc, secs, why = _pytest(copy, m.tests, timeout)
            finally:
                target.write_text(original)
            killed += rc != 0
            print(f"  {'killed' if rc else 'SURVIVED':9s} {m.name} ({secs:.0f} s) {why}", flush=True)
        tried = len(mutations) - stale
        print(f"kill rate: {killed}/{tried} ({100 * killed / max(tried, 1):.0f} %), {stale} stale")
        return 0 if killed == tried and not stale else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="run only mutations whose name contains one of these words")
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per mutation's test run")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or any(w in m.name for w in args.names)]
    if args.list:
        for m in chosen:
            print(f"{m.name:32s} {m.path:32s} {' '.join(m.tests)}")
        return 0
    return run(chosen, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
