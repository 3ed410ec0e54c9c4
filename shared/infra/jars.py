"""Find or assemble the Kafka jars, check the Java runtime that runs them, and keep the
class archives that make its later starts quick."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from shared.infra.errors import InfraError, PrerequisiteError

KAFKA_VERSION = "4.3.1"
LOG4J_VERSION = "2.25.4"
_COMPLETE = ".complete"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleetsentry"


def java_binary() -> str:
    """Path of a Java >= 17 runtime, or a PrerequisiteError saying how to get one."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise PrerequisiteError(
            "Java was not found. Kafka needs Java 17 or newer: "
            "apt-get install openjdk-17-jre-headless (or set JAVA_HOME)."
        )
    out = _version_output(java)
    match = re.search(r'version "(\d+)', out)
    if not match or int(match.group(1)) < 17:
        raise PrerequisiteError(
            f"{java} is not Java 17 or newer ({out.splitlines()[0] if out else 'no version'}); "
            "Kafka 4 needs 17+: apt-get install openjdk-17-jre-headless or set JAVA_HOME."
        )
    return java


@functools.lru_cache(maxsize=8)
def _version_output(java: str) -> str:
    """``java -version``'s words, asked once per binary and process (it is a JVM start)."""
    return subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr


def kafka_libs(version: str = KAFKA_VERSION, quiet: bool = False) -> Path:
    """The directory of Kafka's jars: ``$KAFKA_HOME/libs`` if set, else the Maven-built cache."""
    home = os.environ.get("KAFKA_HOME")
    if home:
        libs = Path(home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise PrerequisiteError(
                f"KAFKA_HOME={home} has no libs/kafka_2.13-*.jar; point it at an unpacked Apache "
                "Kafka distribution, or unset it to assemble Kafka from Maven Central."
            )
        return libs
    target = cache_root() / f"kafka-{version}"
    if (target / _COMPLETE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two runs side by side (tests, CI) must not assemble into the same folder at once.
    with open(target.parent / f".kafka-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _COMPLETE).exists():
            _assemble(target, version, quiet)
    return target


def _assemble(target: Path, version: str, quiet: bool) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise PrerequisiteError(
            "Maven (mvn) was not found; it fetches Kafka's jars from Maven Central. "
            "Install it with: apt-get install maven (or set KAFKA_HOME to a Kafka distribution)."
        )
    pom = resources.files("shared.infra").joinpath("pom.xml").read_text()
    pom = pom.replace("@KAFKA_VERSION@", version).replace("@LOG4J_VERSION@", LOG4J_VERSION)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=target.parent))
    (staging / "pom.xml").write_text(pom)
    libs = staging / "libs"
    if not quiet:
        print(
            f"Fetching Apache Kafka {version} jars from Maven Central into {target} ...", flush=True
        )
    proc = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(staging / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise PrerequisiteError(
            f"Maven could not fetch Kafka {version} from Maven Central (exit {proc.returncode}). "
            "Check that Maven Central is reachable (proxy settings in ~/.m2/settings.xml), "
            f"or set KAFKA_HOME to a Kafka distribution.\n{tail}"
        )
    (libs / _COMPLETE).write_text(version)
    if target.exists():
        shutil.rmtree(target)
    # Rename is atomic: a concurrent reader sees no half-filled cache.
    libs.rename(target)
    shutil.rmtree(staging, ignore_errors=True)


def classpath(libs: Path) -> str:
    return str(libs / "*")


# Options added to every JVM the package starts (Kafka, its format, MirrorMaker), e.g.
# "-XX:TieredStopAtLevel=1": the quick compiler only, which spends 40 % less CPU over a
# broker's first minutes and suits brokers that live minutes (the test suite sets it).
JVM_OPTS_ENV = "FLEETSENTRY_JVM_OPTS"


def extra_jvm_opts() -> list[str]:
    """``$FLEETSENTRY_JVM_OPTS``, split as a shell would."""
    return shlex.split(os.environ.get(JVM_OPTS_ENV, ""))


def class_data_sharing(local: Path, libs: Path, java: str, main: str) -> list[str]:
    """JVM options for AppCDS: map the classes a previous run recorded instead of parsing
    ~5,000 of them from the jars again, most of a Kafka or MirrorMaker start on 2 cores.

    ``local`` is this process's own archive (beside its data). Without one the machine's
    shared archive for this Java, these jars and this ``main`` class serves (see
    ``share_archive``); without either, the JVM records its classes into ``local`` as it
    exits, which takes it several seconds. A stale archive (another Java) is ignored by the
    JVM.
    """
    for archive in (local, _shared_archive(libs, java, main)):
        if archive.exists() and archive.stat().st_size > 0:
            return [f"-XX:SharedArchiveFile={archive}", "-Xshare:auto"]
    return [f"-XX:ArchiveClassesAtExit={local}"]


@contextmanager
def tool_class_data_sharing(libs: Path, java: str, main: str) -> Iterator[list[str]]:
    """``class_data_sharing`` for a one-shot tool (a node's format): the machine's archive,
    or one recorded by this run and offered to the machine when the block ends without an
    error."""
    with tempfile.TemporaryDirectory(prefix="fleetsentry-cds-") as tmp:
        local = Path(tmp) / "classes.jsa"
        yield class_data_sharing(local, libs, java, main)
        share_archive(local, libs, java, main)


def share_archives(locals_: list[Path], main: str) -> None:
    """``share_archive`` for what a service's clean stop leaves, with this machine's Java and
    jars; nothing a stop could fail on (no Java or jars to be found: nothing is offered)."""
    if not locals_:
        return
    try:
        libs, java = kafka_libs(quiet=True), java_binary()
    except (InfraError, OSError):
        return
    for local in locals_:
        share_archive(local, libs, java, main)


def share_archive(local: Path, libs: Path, java: str, main: str) -> None:
    """Offer ``local``, written by a JVM that has exited cleanly, as the machine's archive
    for this Java and these jars, unless there is one. Best effort: a cache that cannot be
    written only costs later first starts their time."""
    shared = _shared_archive(libs, java, main)
    if shared.exists() or not local.exists() or local.stat().st_size == 0:
        return
    try:
        shared.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=shared.parent, delete=False) as tmp:
            with open(local, "rb") as src:
                shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, shared)  # whole or not at all, for JVMs starting meanwhile
    except OSError:
        return


def _shared_archive(libs: Path, java: str, main: str) -> Path:
    """Where the archive for this Java binary, jar directory and main class lives: named by
    them, so a Java upgrade, other jars or another program get one of their own."""
    java_path = Path(java).resolve()
    try:
        stat = java_path.stat()
        jars = sorted(p.name for p in libs.glob("*.jar"))
    except OSError:
        jars, stat = [], None
    key = f"{java_path}|{stat and (stat.st_size, stat.st_mtime_ns)}|{libs.resolve()}|{jars}|{main}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "cds" / f"{main.rsplit('.', 1)[-1]}-{digest}.jsa"


if __name__ == "__main__":
    # `python -m shared.infra.jars`: assemble (or find) the jars and print where they are.
    import sys

    from shared.errors import FleetsentryError

    try:
        java_binary()
        print(kafka_libs())
    except FleetsentryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
