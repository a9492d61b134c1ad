"""`camid weights fetch` against a loopback HTTP server on 127.0.0.1 that the test starts, serving
small generated stand-ins; and training that refuses to start while weights are missing.
Nothing here touches any other address."""
from __future__ import annotations

import hashlib
import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from camid import cli
from camid.config import load_config
from camid.models.registry import get_spec
from camid.models.weights import WeightsFile, backbones_of, digest_in_name, fetch, published
from conftest import REPO

KAGGLE = REPO / "configs" / "kaggle.yaml"


def stand_in(seed: int) -> bytes:
    """A small torch file of tensors: what a weights file reads as, a few hundred bytes."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(seed, seed + 64, dtype=torch.float32)}, buf)
    return buf.getvalue()


def named(data: bytes, stem: str = "stub") -> str:
    """The published naming convention: <stem>-<first 8 hex of the SHA-256>.pth."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


class Server:
    """Files by URL path; Range requests; ``cut``: paths whose next response stops half-way."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.cut:
                    server.cut.discard(path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def wf(self, name: str, digest: str | None = "name", backbone: str = "stub") -> WeightsFile:
        return WeightsFile(backbone, name, self.url + name, digest_in_name(name) if digest == "name" else digest)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_the_right_file_is_accepted_and_renamed_into_place(server, tmp_path):
    data = stand_in(1)
    name = named(data)
    server.files[name] = data
    (out,) = fetch([server.wf(name)], tmp_path)
    assert out.ok, out.message
    assert (tmp_path / name).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no .part, no temp file left
    (again,) = fetch([server.wf(name)], tmp_path)
    assert again.ok and "present, verified" in again.message and len(server.requests) == 1


def test_a_wrong_digest_is_refused_and_deleted(server, tmp_path):
    data = stand_in(2)
    name = named(stand_in(3))  # the name promises other bytes
    server.files[name] = data
    (out,) = fetch([server.wf(name)], tmp_path)
    assert not out.ok and "refused and deleted" in out.message and "does not match" in out.message
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_transfer_resumes_where_it_stopped(server, tmp_path):
    data = stand_in(4) * 20
    name = named(data)
    server.files[name] = data
    server.cut.add(name)
    (out,) = fetch([server.wf(name)], tmp_path, retries=1)
    assert out.ok, out.message
    assert (tmp_path / name).read_bytes() == data
    (first, _), (second, rng) = server.requests
    assert first == second == name and rng == f"bytes={len(data) // 2}-"


def test_a_part_left_by_a_killed_run_is_resumed(server, tmp_path):
    data = stand_in(5) * 20
    name = named(data)
    server.files[name] = data
    (tmp_path / f"{name}.part").write_bytes(data[:1000])
    (out,) = fetch([server.wf(name)], tmp_path)
    assert out.ok and (tmp_path / name).read_bytes() == data
    assert server.requests == [(name, "bytes=1000-")]


def test_an_interruption_past_the_retries_keeps_the_part_to_resume(server, tmp_path):
    data = stand_in(6) * 20
    name = named(data)
    server.files[name] = data
    server.cut.add(name)
    (out,) = fetch([server.wf(name)], tmp_path, retries=0)
    assert not out.ok and "run again to resume" in out.message
    assert (tmp_path / f"{name}.part").stat().st_size == len(data) // 2 and not (tmp_path / name).exists()


def test_a_404_is_reported_with_the_url(server, tmp_path):
    (out,) = fetch([server.wf("absent-0123abcd.pth")], tmp_path)
    assert not out.ok and "HTTP 404" in out.message and server.url + "absent-0123abcd.pth" in out.message


def test_an_unreachable_host_names_the_url_and_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = WeightsFile("stub", "stub-0123abcd.pth", f"http://127.0.0.1:{port}/stub-0123abcd.pth", "0123abcd")
    (out,) = fetch([wf], tmp_path, timeout=5)
    assert not out.ok and "cannot reach" in out.message and wf.url in out.message
    assert str(tmp_path / "stub-0123abcd.pth") in out.message


def test_the_published_sources_of_kaggle_yaml():
    """The eight pretrainedmodels files, their URLs and the digest each name carries."""
    files = [published(get_spec(b)) for b in backbones_of(load_config(KAGGLE))]
    assert len(files) == 8 and all(f is not None for f in files)
    by_name = {f.backbone: f for f in files if f is not None}
    assert by_name["se_resnext50_32x4d"].name == "se_resnext50_32x4d-a260b3a4.pth"
    assert by_name["se_resnext50_32x4d"].sha256 == "a260b3a4"
    assert by_name["densenet201"].sha256 == "5750cbb1e"  # nine digits: compared over all nine
    assert by_name["dpn92"].url.endswith("/dpn92_extra-fda993c95.pth")
    timm = published(get_spec("timm/resnet18"))
    assert timm is not None and timm.sha256 is None and timm.name.startswith("timm/resnet18.")


def _mirror_of_kaggle(server: Server, tmp_path: Path) -> Path:
    """Stand-ins under the eight published names, and a sha256sum file of them (their names' digests
    are the real files', which no stand-in can have)."""
    lines = []
    for i, backbone in enumerate(backbones_of(load_config(KAGGLE))):
        wf = published(get_spec(backbone))
        assert wf is not None
        data = stand_in(10 + i)
        server.files[wf.name] = data
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {wf.name}")
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("\n".join(lines) + "\n")
    return sums


def test_fetch_fills_weights_dir_for_kaggle_yaml_from_a_mirror(server, tmp_path, capsys):
    sums = _mirror_of_kaggle(server, tmp_path)
    wd = tmp_path / "weights"
    argv = ["weights", "fetch", "--config", str(KAGGLE), "--base-url", server.url, "--weights-dir", str(wd)]
    assert cli.main([*argv, "--sums", str(sums)]) == 0
    assert len(list(wd.glob("*.pth"))) == 8
    assert "8 weights file(s) verified" in capsys.readouterr().out
    # a corrupted copy on the mirror is refused, the others stay
    victim = next(iter(server.files))
    server.files[victim] = server.files[victim][:-10] + b"0123456789"
    (wd / victim).unlink()
    assert cli.main([*argv, "--sums", str(sums)]) == 2
    captured = capsys.readouterr()
    assert f"FAILED: {server.url}{victim} refused and deleted" in captured.out
    assert "1 of 8 weights file(s) not in place" in captured.err
    assert not (wd / victim).exists() and len(list(wd.glob("*.pth"))) == 7


def test_without_a_sums_file_the_published_digests_refuse_stand_ins(server, tmp_path, capsys):
    _mirror_of_kaggle(server, tmp_path)
    wd = tmp_path / "weights"
    assert cli.main(["weights", "fetch", "--config", str(KAGGLE), "--base-url", server.url, "--weights-dir", str(wd),
                     "--backbones", "se_resnet50"]) == 2
    assert "does not match the expected ce0d4300" in capsys.readouterr().out
    assert list(wd.iterdir()) == []


def test_from_a_local_folder(tmp_path):
    data = stand_in(7)
    name = named(data)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / name).write_bytes(data)
    wf = WeightsFile("stub", name, "http://127.0.0.1:9/" + name, digest_in_name(name))
    out, absent = fetch([wf, WeightsFile("x", "x-0123abcd.pth", "u", "0123abcd")], tmp_path / "w",
                        mirror=tmp_path / "mirror")
    assert out.ok and (tmp_path / "w" / name).read_bytes() == data
    assert not absent.ok and "not in" in absent.message and "published at u" in absent.message


@pytest.mark.parametrize("command", ["train-all", "train"])
def test_training_refuses_to_start_while_weights_are_missing(kaggle_layout, tmp_path, monkeypatch, capsys, command):
    """A missing file was a WARNING in one job's log, then hours from random init."""
    monkeypatch.chdir(tmp_path)  # weights_dir: weights, relative to the current folder
    argv = [command, "--config", str(KAGGLE), "--data", str(kaggle_layout), "--workdir", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    expected = 8 if command == "train-all" else 1
    assert f"{expected} ImageNet weights file(s) missing" in err and "camid weights fetch --config" in err
    assert "densenet201: weights/densenet201-5750cbb1e.pth" in err
    assert not (tmp_path / "models").exists()
