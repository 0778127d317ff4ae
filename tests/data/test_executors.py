"""The data steps give identical outputs on every executor (one process, a process pool, Ray)."""

import pytest

from cvpipe.data.schema import DetectionDataset


def outputs(load_ctx, prep_ctx):
    ds = DetectionDataset.load(prep_ctx.output("dataset"))
    return (ds.images.to_dict("records"), ds.annotations.to_dict("records"),
            sorted(p.name for p in load_ctx.output("images").iterdir()),
            sorted(p.name for p in prep_ctx.output("images").iterdir()))


def run_both(run_load, run_prep, source, executor, workers=2):
    lc, _ = run_load(source, executor=executor, workers=workers)
    pc, _ = run_prep(lc, executor=executor, workers=workers)
    return outputs(lc, pc)


def test_process_pool_matches_one_process(coco_dir, run_load, run_prep, monkeypatch, tmp_path):
    monkeypatch.setattr("cvpipe.pipeline.executor.POOL_MIN_ITEMS", 2)  # use the pool even for 6 images
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache-pool"))  # empty: the pool really reads every image
    pooled = run_both(run_load, run_prep, coco_dir, "process")
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache-serial"))
    assert pooled == run_both(run_load, run_prep, coco_dir, "serial", 1)


@pytest.mark.slow
def test_ray_local_cluster_matches_one_process(coco_dir, run_load, run_prep, tmp_path, monkeypatch):
    """Two Ray worker processes and one process give the same data version. Each run gets an empty digest
    cache: with a warm one nothing would be sent to Ray (every image's header and decode would be known)."""
    import ray  # the ray extra installs it: a broken install fails, never skips

    monkeypatch.setattr("cvpipe.pipeline.executor.POOL_MIN_ITEMS", 2)
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache-ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_both(run_load, run_prep, coco_dir, "ray")
    finally:
        ray.shutdown()
    monkeypatch.setenv("CVPIPE_CACHE", str(tmp_path / "cache-serial"))
    assert on_ray == run_both(run_load, run_prep, coco_dir, "serial", 1)
