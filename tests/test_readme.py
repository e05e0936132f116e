"""The README's commands and code blocks stay true."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_python

README = Path(__file__).parent.parent / "README.md"


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block is not None
    lines = [line for line in first_block.group(1).splitlines() if line.strip()]
    assert "examples/order_pipeline.py" in lines[0]
    assert "python -m pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest" in ci


def test_readme_python_blocks_run_in_order(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 5
    code = "\n".join(blocks).replace("/tmp/keelflow-readme", str(tmp_path / "store"))
    result = run_python(code, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "failed: gateway timeout" in result.stdout
    # A second run finds run_1 in storage and returns 101 without running a step.
    again = run_python(code, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_example_pipeline_runs_and_reads_back(tmp_path):
    example = README.parent / "examples" / "order_pipeline.py"
    args = ["--storage", str(tmp_path / "store"), "--orders", "6", "--id", "orders-test"]
    code = f"import runpy, sys; sys.argv = {[str(example), *args]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    first = run_python(code, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "'orders': 6" in first.stdout and "SUCCESSFUL" in first.stdout
    second = run_python(code, timeout=120)
    assert second.returncode == 0, second.stderr
    assert first.stdout.splitlines()[0].split(" in ")[0] == second.stdout.splitlines()[0].split(" in ")[0]


def test_readme_ray_example_runs_on_a_cluster_with_s3(ray_cluster, s3_bucket, tmp_path):
    # ```py blocks need a Ray cluster or S3; this one runs on the test cluster and S3 server.
    from s3server import s3_url

    block = next(b for b in re.findall(r"```py\n(.*?)```", README.read_text(), re.S) if 'executor="ray"' in b)
    code = block.replace("s3://my-bucket/flows", s3_url(s3_bucket, "readme"))
    result = run_python(code, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
