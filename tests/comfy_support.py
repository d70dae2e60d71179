"""A real ComfyUI for the tests: in-process imports, small SDXL-architecture models, a server.

ComfyUI comes from COMFYUI_PATH or from the tree `make` set up in .comfyui/ComfyUI (see
scripts/setup.sh). It is put first on sys.path so ComfyUI's own `nodes` module wins over this
pack's `nodes/` folder, which sits in the repository root.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# A relative COMFYUI_PATH is taken from the repository root (where `make` runs), also in the
# server process, whose working directory is the ComfyUI folder.
COMFYUI_PATH = (REPO / (os.environ.get("COMFYUI_PATH") or ".comfyui/ComfyUI")).resolve()
PACK_DIRNAME = "comfyui-lora-hypernet"
FIXTURE_DIRNAME = "lora_hypernet_test_fixtures"

# DESIGN.md's tiny SDXL-architecture UNet: SDXL's block structure and conditioning at 6.5 M
# parameters, so real ComfyUI code paths run in seconds on a CPU.
TINY_SDXL_UNET = dict(
    use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=32,
    num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 1, 1, 1, 1],
    transformer_depth_middle=1, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1],
    context_dim=64, num_head_channels=64, adm_in_channels=2816, num_classes="sequential",
    use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False,
    use_temporal_attention=False, use_temporal_resblock=False,
)
REAL_SDXL_UNET = dict(
    TINY_SDXL_UNET, model_channels=320, transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048,
)

# ComfyUI's SD1.5 UNet config as its model detection finds it in an SD1.5 checkpoint.
SD15_UNET = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=768, num_heads=8,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    use_temporal_attention=False, use_temporal_resblock=False,
)
# A tiny SD1.5-architecture UNet: SD1.5's blocks (channel_mult [1,2,4,4], attention on the first
# three levels and in the middle, heads of fixed count, no adm) at model_channels 32. Its context
# (96) differs from the tiny SDXL's (64), so cross-attention shapes tell the two apart too.
TINY_SD15_UNET = dict(SD15_UNET, model_channels=32, context_dim=96)


def comfyui_version() -> str:
    """The version of the ComfyUI under test, from its comfyui_version.py."""
    try:
        text = (COMFYUI_PATH / "comfyui_version.py").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("'\"")
    return "unknown"


def prepare_comfy() -> None:
    """Put ComfyUI first on sys.path and switch it to the CPU, before any `comfy.*` import."""
    if not (COMFYUI_PATH / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {COMFYUI_PATH}: run `make test` (it sets one up) or set COMFYUI_PATH")
    if str(COMFYUI_PATH) in sys.path:
        sys.path.remove(str(COMFYUI_PATH))
    sys.path.insert(0, str(COMFYUI_PATH))
    from comfy.cli_args import args
    args.cpu = True


def import_comfy():
    """Import ComfyUI in-process on the CPU and return its `comfy` package."""
    prepare_comfy()
    import comfy.lora
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import comfy.utils
    return comfy


def build_sdxl_model(unet_config: dict, device: str = "cpu", seed: int = 0):
    """A ComfyUI SDXL BaseModel with the given UNet config; real weights are seeded noise."""
    comfy = import_comfy()
    return _build_model(comfy.supported_models.SDXL, comfy.model_base.SDXL, unet_config, device, seed)


def build_sd15_model(unet_config: dict, device: str = "cpu", seed: int = 0):
    """A ComfyUI SD1.5 BaseModel with the given UNet config; real weights are seeded noise."""
    comfy = import_comfy()
    return _build_model(comfy.supported_models.SD15, comfy.model_base.BaseModel, unet_config, device, seed)


def _build_model(config_class, model_class, unet_config: dict, device: str, seed: int):
    import torch
    model_config = config_class(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    with torch.device(device):
        model = model_class(model_config, device=device)
    if device != "meta":
        # ComfyUI leaves weights uninitialised (torch.empty); fill them reproducibly.
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model


def tiny_sdxl_patcher(seed: int = 0):
    return _cpu_patcher(build_sdxl_model(TINY_SDXL_UNET, seed=seed))


def tiny_sd15_patcher(seed: int = 0):
    return _cpu_patcher(build_sd15_model(TINY_SD15_UNET, seed=seed))


def trainable_tiny_sdxl_patcher(seed: int = 0):
    """The tiny SDXL UNet with fan-in scaled weights and unit norm gains: its output responds to
    its attention layers, so a LoRA trained on it measurably lowers its loss (the 0.02-noise
    weights of tiny_sdxl_patcher give gradients below AdamW's epsilon)."""
    import torch
    model = build_sdxl_model(TINY_SDXL_UNET, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) / param[0].numel() ** 0.5)
            else:
                param.zero_()
        for module in model.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.weight is not None:
                module.weight.fill_(1.0)
    return _cpu_patcher(model)


def _cpu_patcher(model):
    import torch
    comfy = import_comfy()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def import_pack():
    """This pack imported the way ComfyUI imports a custom node folder: as a package named after
    its folder, so its modules see `<pack>.hypernet` through relative imports."""
    import importlib.util

    import_comfy()
    if PACK_DIRNAME in sys.modules:
        return sys.modules[PACK_DIRNAME]
    spec = importlib.util.spec_from_file_location(PACK_DIRNAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_DIRNAME] = module
    spec.loader.exec_module(module)
    return module


TINY_CHECKPOINT_MARK = "tiny-sdxl"
TINY_SD15_CHECKPOINT_MARK = "tiny-sd15"
TINY_TRAINABLE_CHECKPOINT_MARK = "tiny-sdxl-trainable"  # trainable_tiny_sdxl_patcher, for LoRA training


def write_tiny_checkpoint(path, mark: str = TINY_CHECKPOINT_MARK) -> None:
    """A small safetensors file that the test pack's CheckpointLoaderSimple loads as the tiny
    SDXL model, or with TINY_SD15_CHECKPOINT_MARK as the tiny SD1.5 model (tests/fixture_nodes):
    the shipped workflows run unchanged in the frontend."""
    import torch
    from safetensors.torch import save_file
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({"marker": torch.zeros(1)}, str(path), {"lora_hypernet_test": mark})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The websocket events that end a prompt.
FINISHED = ("execution_success", "execution_error", "execution_interrupted")


class ComfyServer:
    """`main.py --cpu` on 127.0.0.1 with this pack in a temporary base directory."""

    def __init__(self, base_dir: Path, extra_args: tuple[str, ...] = (), fixture_nodes: bool = False):
        self.base_dir = Path(base_dir)
        for sub in ("custom_nodes", "input", "output", "user", "temp", "models"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        packs = {PACK_DIRNAME: REPO}
        if fixture_nodes:
            packs[FIXTURE_DIRNAME] = REPO / "tests" / "fixture_nodes"
        for name, target in packs.items():
            link = self.base_dir / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "comfyui.log"
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        cmd = [sys.executable, str(COMFYUI_PATH / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base_dir), "--disable-auto-launch",
               "--disable-api-nodes", "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
               *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        # A new process group, so stop() also reaches anything the server started.
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
            except ProcessLookupError:
                pass
        self._log.close()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def post(self, path: str, payload: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            return json.loads(body) if body else None

    def queue_prompt(self, prompt: dict) -> str:
        try:
            return self.post("/prompt", {"prompt": prompt})["prompt_id"]
        except urllib.error.HTTPError as err:
            raise AssertionError(f"ComfyUI refused the prompt: {err.read().decode(errors='replace')}") from None

    def wait_history(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running the prompt:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run_prompt(self, prompt: dict, timeout: float = 600) -> tuple[dict, list[tuple[str, float]]]:
        """Queue a prompt and follow ComfyUI's websocket: (history entry, [(node id, seconds)])."""
        timings, current, started = [], None, time.monotonic()

        async def time_nodes(kind: str, data: dict, session) -> bool:
            nonlocal current, started
            if kind not in ("executing", *FINISHED):
                return False
            now = time.monotonic()
            if current is not None:
                timings.append((current, now - started))
            current, started = data.get("node"), now
            return kind != "executing" or current is None

        prompt_id = self.follow_prompt(prompt, time_nodes, timeout)
        return self.wait_history(prompt_id, timeout=60), timings

    def follow_prompt(self, prompt: dict, on_event, timeout: float = 600) -> str:
        """Queue `prompt` with ComfyUI's websocket open and hand each of its events to
        `await on_event(type, data, session)` (an aiohttp session, e.g. to POST /interrupt)
        until that returns True; returns the prompt id."""
        import asyncio
        import uuid

        import aiohttp

        async def follow() -> str:
            client_id = uuid.uuid4().hex
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
                    async with session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as resp:
                        body = await resp.json()
                        if resp.status != 200:
                            raise AssertionError(f"ComfyUI refused the prompt: {json.dumps(body)[:3000]}")
                    prompt_id = body["prompt_id"]
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        event = json.loads(msg.data)
                        data = event.get("data", {})
                        if data.get("prompt_id") == prompt_id and await on_event(event["type"], data, session):
                            break
            return prompt_id

        return asyncio.run(asyncio.wait_for(follow(), timeout))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def copy_into(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def patched_weights(comfy, patcher) -> dict:
    """The MODEL's weights as ComfyUI patches them when it loads the model (a copy)."""
    comfy.model_management.load_models_gpu([patcher])
    weights = {k: v.clone() for k, v in patcher.model.state_dict().items()}
    comfy.model_management.unload_all_models()
    return weights
