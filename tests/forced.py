"""A real refserver cluster whose rank 0 writes scripted text (see forced_output/).

``ForcedCluster.script(text)`` registers the tokens of `text` (and an end-of-sequence
token) and returns a marker: a request whose prompt contains the marker gets exactly that
output, through the real engine, pipeline and API.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from transformers import AutoTokenizer

from simcluster.serve import ServerCluster

FORCED_OUTPUT_DIR = Path(__file__).parent / "forced_output"


class ForcedCluster:
    """A ServerCluster (``.server``) with scripted output, as a context manager."""

    def __init__(
        self, world_size: int, model_dir: Path, work_dir: Path, extra_args: tuple[str, ...] = ()
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self._file = work_dir / "forced-tokens.json"
        self._config = {"tokenizer": str(model_dir / "tokenizer.json"), "scripts": {}}
        self._save()
        python_path = [str(FORCED_OUTPUT_DIR), os.environ.get("PYTHONPATH", "")]
        env = {
            "REFSERVER_TEST_FORCED_TOKENS": str(self._file),
            "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
        }
        self.server = ServerCluster(world_size, model_dir, extra_args=extra_args, env=env)

    def __enter__(self) -> ForcedCluster:
        self.server.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.ranks.stop()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def tokens(self, text: str, end: bool = True) -> list[int]:
        """The tokens of `text`, and the end-of-sequence token unless end is False."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids + ([self.tokenizer.eos_token_id] if end else [])

    def script(self, text: str, end: bool = True) -> str:
        """Register `text` as the output for prompts that contain the returned marker."""
        marker = f"script-{uuid.uuid4().hex[:12]}"
        self._config["scripts"][marker] = self.tokens(text, end)
        self._save()
        return marker

    def _save(self) -> None:
        temporary = self._file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._config))
        os.replace(temporary, self._file)  # a rank never reads half a file
