"""The real ComfyUI server in a subprocess, on a temporary base folder, and its HTTP API."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PACK_FOLDER = "comfyui-duca-accelerate"  # the folder name users clone into
STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    def __init__(self, comfy_dir: Path, base: Path):
        self.comfy_dir, self.base = comfy_dir, base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.process = None

    def start(self) -> ComfyServer:
        for name in ("user", "output", "input", "temp"):
            (self.base / name).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(self.comfy_dir / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-api-nodes", "--base-directory", str(self.base),
               "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"ComfyUI exited during startup:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {STARTUP_SECONDS}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # --- HTTP ------------------------------------------------------------
    def request(self, method: str, path: str, body=None):
        """(status, decoded JSON or text); HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str):
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body}")
        return body

    def queue(self, prompt: dict, client_id: str = "e2e") -> str:
        status, body = self.request("POST", "/prompt", {"prompt": prompt, "client_id": client_id})
        if status != 200:
            raise AssertionError(f"/prompt rejected the graph (HTTP {status}): {json.dumps(body)[:3000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 180) -> dict:
        """The prompt's history entry once it has finished; raises if it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry:  # the history holds a prompt once it has finished
                status = entry.get("status", {})
                if status.get("status_str") != "success":
                    raise AssertionError(f"run failed: {json.dumps(status.get('messages'))[:4000]}")
                return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died during the run:\n{self.log_tail()}")
            time.sleep(0.3)
        raise TimeoutError(f"run {prompt_id} unfinished after {timeout}s:\n{self.log_tail()}")
