"""The NAS search space: what a candidate student may look like.

The chapter's dimensions that this model family has: encoder depth, decoder depth, heads, width, FFN
multiple, the encoder's input length (rec: how many history items it reads; capped by the teacher's)
and the beam. Activation and positional encoding are fixed (GELU, learned positions): the model has
one of each, so they are not searched. Retrieval text length is not searched either: the ONNX
Runtime encoder already runs on each query's real length (7-11 tokens on the Bible), so a cap below
the teacher's 32 would only cut long queries.

>>> sp = SearchSpace(widths=(32,), heads=(2,), enc_layers=(1,), dec_layers=(1,), ffn_mults=(2,), beams=(10,), max_lens=(50,))
>>> import optuna
>>> t = optuna.trial.FixedTrial({"d_model": 32, "n_heads": 2, "n_enc_layers": 1, "n_dec_layers": 1, "ffn_mult": 2, "beam": 10,
...                              "max_len": 50})
>>> cfg, beam = sp.sample(t, max_len=200); (cfg.d_model, cfg.n_enc_layers, cfg.max_len, beam)
(32, 1, 50, 10)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..model import GRConfig

__all__ = ["SearchSpace", "ARCH_KEYS"]

# the GRConfig fields a candidate's architecture is made of (student.json's "config")
ARCH_KEYS = ("d_model", "n_heads", "n_enc_layers", "n_dec_layers", "ffn_mult", "max_len")


@dataclass(frozen=True)
class SearchSpace:
    widths: tuple[int, ...] = (32, 48, 64, 96, 128, 192)
    heads: tuple[int, ...] = (2, 4)
    enc_layers: tuple[int, ...] = (1, 2, 3)
    dec_layers: tuple[int, ...] = (1, 2)
    ffn_mults: tuple[int, ...] = (2, 4)
    beams: tuple[int, ...] = (10, 20)
    max_lens: tuple[int, ...] = ()  # encoder input lengths to try (rec history); () = the teacher's

    @classmethod
    def for_task(cls, task: str, teacher_max_len: int, **kw) -> "SearchSpace":
        """The default space of a task: rec also searches the history length (up to the teacher's)."""
        sp = cls(**kw)
        if task == "rec" and not sp.max_lens:
            sp = replace(sp, max_lens=tuple(n for n in (25, 50, 100, 200) if n <= teacher_max_len) or (teacher_max_len,))
        return sp

    def sample(self, trial, *, max_len: int) -> tuple[GRConfig, int]:
        """A student config (task and levels come from the teacher; ``max_len`` is the teacher's input
        length, used when the space does not search it) and its beam."""
        d = trial.suggest_categorical("d_model", list(self.widths))
        nh = trial.suggest_categorical("n_heads", list(self.heads))
        n = int(trial.suggest_categorical("max_len", list(self.max_lens))) if self.max_lens else max_len
        cfg = GRConfig(d_model=d, n_heads=nh if d % nh == 0 else 1, n_enc_layers=trial.suggest_categorical("n_enc_layers", list(self.enc_layers)),
                       n_dec_layers=trial.suggest_categorical("n_dec_layers", list(self.dec_layers)),
                       ffn_mult=trial.suggest_categorical("ffn_mult", list(self.ffn_mults)), dropout=0.1, max_len=min(n, max_len))
        return cfg, int(trial.suggest_categorical("beam", list(self.beams)))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}
