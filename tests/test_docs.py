"""The protocol spec's minimal client runs against a real shard."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def test_minimal_client_in_protocol_doc_works(shards):
    group = shards(num_shards=1, total_size=5)
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    code = code.replace("tcp://127.0.0.1:5000", group.endpoints[0])
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    namespace["sock"].close(linger=0)
    assert namespace["committed"]["op"] == "commit" and namespace["committed"]["version"] == 1
    assert namespace["reply"]["op"] == "report" and not namespace["reply"].get("control", {}).get("stop")
