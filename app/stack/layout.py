"""Where the local stack keeps its binaries, data, logs and generated configs.

Everything lives under ``$IMAGEREC_HOME`` (default ``<repo>/.stack``, git-ignored) so that
``make clean`` is one ``rm -rf`` and nothing leaks into the user's home directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.settings import REPO_ROOT, Settings


@dataclass(frozen=True)
class Layout:
    """Paths derived from the settings; pure, so it is cheap to build anywhere."""

    home: Path
    topology: str = "single"

    @classmethod
    def from_settings(cls, settings: Settings) -> Layout:
        return cls(home=Path(settings.home), topology=settings.topology)

    @property
    def repo(self) -> Path:
        return REPO_ROOT

    @property
    def bin(self) -> Path:
        return self.home / "bin"

    @property
    def kafka_libs(self) -> Path:
        return self.home / "kafka" / "libs"

    @property
    def kafka_agent_dir(self) -> Path:
        """The JMX exporter agent jar, kept off Kafka's class path (it is an agent only)."""
        return self.home / "kafka" / "agent"

    @property
    def data(self) -> Path:
        """Each topology keeps its own data: a cluster's servers cannot read a single node's
        files (MinIO's erasure sets, Kafka's cluster id), and switching must not lose them."""
        return self.home / ("data" if self.topology == "single" else f"data-{self.topology}")

    @property
    def stack_env(self) -> Path:
        """What the running stack's topology sets (``app.stack.topology``)."""
        return self.home / "stack.env"

    @property
    def hold(self) -> Path:
        """Hold files: a cluster program whose file exists waits before it starts again."""
        return self.run / "hold"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets.env"

    @property
    def supervisor_conf(self) -> Path:
        return self.run / "supervisord.conf"

    @property
    def supervisor_sock(self) -> Path:
        return self.run / "supervisor.sock"

    @property
    def supervisor_pid(self) -> Path:
        return self.run / "supervisord.pid"

    @property
    def venv_bin(self) -> Path:
        return self.repo / ".venv" / "bin"

    def worker_data(self, worker_id: int) -> Path:
        return self.data / f"faust-{worker_id}"

    def ensure(self) -> None:
        for path in (self.bin, self.data, self.logs, self.run):
            path.mkdir(parents=True, exist_ok=True)
