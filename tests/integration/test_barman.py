"""Barman job preflight. The backup itself (local Barman server + barman-cloud to S3, facts,
stock layout, file modes, no slot left) is exercised once in test_pitr.py's scene, which every
restore there builds on."""
from __future__ import annotations



def test_barman_job_with_a_compression_barman_cloud_lacks_is_refused_before_any_work(s3world):
    w = s3world
    bucket = w.s3_site("eu", region="eu-west-1")
    w.jobs["base"] = {"method": "barman", "sites": ["eu"], "compression": "zstd"}
    w.policy()
    cp = w.cli("backup", "base", check=False)
    assert cp.returncode == 1 and "cannot compress with zstd" in cp.stderr and "HINT" in cp.stderr
    assert "Traceback" not in cp.stderr
    assert "Contents" not in w.moto.client("eu-west-1").list_objects_v2(Bucket=bucket, Prefix="pg/clusters/main/base/")
