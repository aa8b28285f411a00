"""A real Stable Diffusion WebUI Forge for the end-to-end test and bench/forge_host.py: started from
the folder FORGE_HOST names (its environment: FORGE_PYTHON, default FORGE_HOST/venv/bin/python),
offline on the CPU, with a random-weight SD1.5-style checkpoint, and driven over its HTTP API."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

SCRIPT = "Accelerate (DuCa)"  # the script's title: its key in `alwayson_scripts`
FLAGS = ["--skip-prepare-environment", "--api", "--nowebui", "--skip-torch-cuda-test", "--no-download-sd-model",
         "--always-cpu", "--skip-version-check", "--server-name", "127.0.0.1"]  # without it Forge binds every interface


def forge_folder():
    folder = os.environ.get("FORGE_HOST")
    return Path(folder) if folder else None


class Forge:
    def __init__(self, url: str, process=None):
        self.url, self.process = url.rstrip("/"), process

    @classmethod
    def start(cls, folder: Path, checkpoints: Path, log: Path, timeout: float = 240) -> "Forge":
        python = os.environ.get("FORGE_PYTHON") or str(folder / "venv" / "bin" / "python")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        process = subprocess.Popen([python, "launch.py", *FLAGS, "--port", str(port), "--ckpt-dir", str(checkpoints)],
                                   cwd=folder, stdout=log.open("w"), stderr=subprocess.STDOUT)
        forge = cls(f"http://127.0.0.1:{port}", process)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"Forge exited ({process.returncode}); its log: {log}")
            try:
                forge.get("/sdapi/v1/sd-models")
                return forge
            except OSError:
                time.sleep(2)
        forge.stop()
        raise RuntimeError(f"Forge did not answer within {timeout:.0f} s; its log: {log}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, json.dumps(payload).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=900) as response:
            return json.load(response)

    def txt2img(self, duca_args=None, **payload):
        """(the first picture as an RGB array, its infotext, seconds the request took, its PNG)."""
        return self.generate("txt2img", duca_args, **payload)

    def img2img(self, init_png: bytes, duca_args=None, **payload):
        image = "data:image/png;base64," + base64.b64encode(init_png).decode()
        return self.generate("img2img", duca_args, init_images=[image], **payload)

    def generate(self, kind: str, duca_args=None, **payload):
        import numpy
        from PIL import Image
        body = {"prompt": "a lighthouse at dusk", "negative_prompt": "", "seed": 1, "steps": 10, "width": 64,
                "height": 64, "cfg_scale": 5.0, "sampler_name": "Euler", "scheduler": "Simple", **payload}
        if duca_args is not None:
            body["alwayson_scripts"] = {SCRIPT: {"args": duca_args}}
        start = time.perf_counter()
        answer = self.post(f"/sdapi/v1/{kind}", body)
        seconds = time.perf_counter() - start
        png = base64.b64decode(answer["images"][0])
        pixels = numpy.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        return pixels, json.loads(answer["info"])["infotexts"][0], seconds, png

    def png_info(self, png: bytes) -> dict:
        """The generation parameters Forge reads back from a picture (PNG Info, "Send to")."""
        return self.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + base64.b64encode(png).decode()})
