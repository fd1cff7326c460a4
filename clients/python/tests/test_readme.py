"""The "Ten lines to a retriever" block of clients/python/README.md runs
as written against a real leader and two replicas (its endpoints replaced
by the test cluster's), so the README cannot drift from the code."""
import contextlib
import io
import os
import re

from conftest import HERE


def test_readme_retriever_example_runs(make_cluster):
    with open(os.path.join(os.path.dirname(HERE), "README.md")) as f:
        text = f.read()
    section = text.split("## Ten lines to a retriever", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    lines = [ln for ln in code.splitlines() if ln.strip()]
    assert len(lines) <= 12, "the example grew past ten lines or so"
    # dim 384 as in a real deployment: the lexical embedder needs room
    cl = make_cluster(nreplicas=2, dim=384).start()
    cl.wait_connected(2)
    for i, ep in enumerate(["tcp://127.0.0.1:7400", "tcp://127.0.0.1:7410",
                            "tcp://127.0.0.1:7420"]):
        assert ep in code
        code = code.replace(ep, cl.endpoints[i])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().startswith("kill -9 loses no acknowledged write ")

