"""The JVMs' class archives (AppCDS): a process's own archive, else the machine's for the same
Java, jars and program, else record one at exit; a clean exit offers it to the machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.infra import jars

MAIN = "kafka.Kafka"


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """(a jar directory, a Java binary) under a cache of their own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "kafka_2.13-4.3.1.jar").write_bytes(b"jar")
    java = tmp_path / "java"
    java.write_bytes(b"#!/bin/sh\n")
    return libs, str(java)


def _mapped(opts: list[str]) -> str | None:
    return next((o.split("=", 1)[1] for o in opts if o.startswith("-XX:SharedArchiveFile=")), None)


def test_the_first_start_records_and_the_next_home_maps_it(machine: tuple[Path, str]) -> None:
    libs, java = machine
    first, second = libs.parent / "a" / "k.jsa", libs.parent / "b" / "k.jsa"
    first.parent.mkdir()
    assert jars.class_data_sharing(first, libs, java, MAIN) == [f"-XX:ArchiveClassesAtExit={first}"]
    first.write_bytes(b"classes")  # what the JVM wrote as it exited
    jars.share_archive(first, libs, java, MAIN)
    # Another home on the machine maps the shared copy and records nothing at exit.
    opts = jars.class_data_sharing(second, libs, java, MAIN)
    shared = _mapped(opts)
    assert shared and Path(shared).read_bytes() == b"classes" and "-Xshare:auto" in opts
    assert not any("ArchiveClassesAtExit" in o for o in opts)
    # Its own archive, when it has one, comes first.
    assert _mapped(jars.class_data_sharing(first, libs, java, MAIN)) == str(first)


def test_other_jars_another_java_or_program_get_their_own(machine: tuple[Path, str]) -> None:
    libs, java = machine
    local = libs.parent / "k.jsa"
    local.write_bytes(b"classes")
    jars.share_archive(local, libs, java, MAIN)
    fresh = libs.parent / "fresh.jsa"
    assert _mapped(jars.class_data_sharing(fresh, libs, java, MAIN))
    assert not _mapped(jars.class_data_sharing(fresh, libs, java, "org.example.Other"))
    (libs / "kafka-clients-4.3.2.jar").write_bytes(b"jar")
    assert not _mapped(jars.class_data_sharing(fresh, libs, java, MAIN))
    os.utime(java, ns=(0, 0))
    (libs / "kafka-clients-4.3.2.jar").unlink()
    assert not _mapped(jars.class_data_sharing(fresh, libs, java, MAIN))


def test_an_empty_archive_is_not_offered_and_a_shared_one_is_not_replaced(
    machine: tuple[Path, str],
) -> None:
    libs, java = machine
    empty = libs.parent / "empty.jsa"
    empty.write_bytes(b"")
    jars.share_archive(empty, libs, java, MAIN)
    assert not _mapped(jars.class_data_sharing(libs.parent / "x.jsa", libs, java, MAIN))
    one, two = libs.parent / "one.jsa", libs.parent / "two.jsa"
    one.write_bytes(b"first")
    two.write_bytes(b"second")
    jars.share_archive(one, libs, java, MAIN)
    jars.share_archive(two, libs, java, MAIN)
    shared = _mapped(jars.class_data_sharing(libs.parent / "x.jsa", libs, java, MAIN))
    assert shared and Path(shared).read_bytes() == b"first"
    assert [p.name for p in Path(shared).parent.iterdir()] == [Path(shared).name]  # no temp left


def test_a_cache_that_cannot_be_written_costs_only_time(
    machine: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    libs, java = machine
    blocker = libs.parent / "not-a-dir"
    blocker.write_bytes(b"")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # cache_root() under a file
    local = libs.parent / "k.jsa"
    local.write_bytes(b"classes")
    jars.share_archive(local, libs, java, MAIN)  # no error
    assert _mapped(jars.class_data_sharing(local, libs, java, MAIN)) == str(local)


def test_a_one_shot_tool_shares_what_it_recorded_only_when_it_succeeded(
    machine: tuple[Path, str],
) -> None:
    libs, java = machine
    tool = "kafka.tools.StorageTool"
    with pytest.raises(RuntimeError), jars.tool_class_data_sharing(libs, java, tool) as opts:
        recorded = Path(opts[0].split("=", 1)[1])
        recorded.write_bytes(b"classes")  # what the JVM wrote as it exited
        raise RuntimeError("the format failed")
    with jars.tool_class_data_sharing(libs, java, tool) as opts:
        assert opts[0].startswith("-XX:ArchiveClassesAtExit=")
        recorded = Path(opts[0].split("=", 1)[1])
        recorded.write_bytes(b"classes")
    assert not recorded.exists()  # its temporary folder is gone
    with jars.tool_class_data_sharing(libs, java, tool) as opts:
        shared = _mapped(opts)
    assert shared and Path(shared).read_bytes() == b"classes"
    assert not _mapped(jars.class_data_sharing(libs.parent / "x.jsa", libs, java, MAIN))


def test_fleetsentry_jvm_opts_reach_every_jvm_the_package_starts(
    machine: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shared.infra.kafka import KafkaCluster, KafkaNode

    libs, java = machine
    monkeypatch.setenv(jars.JVM_OPTS_ENV, "-XX:TieredStopAtLevel=1 '-Dnote=two words'")
    assert jars.extra_jvm_opts() == ["-XX:TieredStopAtLevel=1", "-Dnote=two words"]
    cluster = KafkaCluster("edge", tmp_path / "kafka", (KafkaNode(1, 1, 2),))
    argv = cluster._argv(cluster.nodes[0], libs, java)
    assert argv[argv.index("-cp") - 2 : argv.index("-cp")] == jars.extra_jvm_opts()
    monkeypatch.setenv(jars.JVM_OPTS_ENV, "")
    assert jars.extra_jvm_opts() == []


def test_a_stop_offers_its_archives_and_never_fails_on_it(
    machine: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    libs, java = machine
    local = libs.parent / "node.jsa"
    local.write_bytes(b"classes")
    monkeypatch.setattr(jars, "kafka_libs", lambda quiet: libs)
    monkeypatch.setattr(jars, "java_binary", lambda: java)
    jars.share_archives([local], MAIN)
    assert _mapped(jars.class_data_sharing(libs.parent / "x.jsa", libs, java, MAIN))

    def no_java() -> str:
        raise jars.PrerequisiteError("Java was not found")

    monkeypatch.setattr(jars, "java_binary", no_java)
    jars.share_archives([local], "org.example.Other")  # no error: nothing offered
    assert not _mapped(
        jars.class_data_sharing(libs.parent / "x.jsa", libs, java, "org.example.Other")
    )
