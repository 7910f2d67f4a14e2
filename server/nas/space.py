"""The NAS search space: what a candidate student may look like (the chapter's dimensions that this
model family has; activation and positional encoding are fixed here: GELU, learned positions).

>>> sp = SearchSpace(widths=(32,), heads=(2,), enc_layers=(1,), dec_layers=(1,), ffn_mults=(2,), beams=(10,))
>>> import optuna
>>> t = optuna.trial.FixedTrial({"d_model": 32, "n_heads": 2, "n_enc_layers": 1, "n_dec_layers": 1, "ffn_mult": 2, "beam": 10})
>>> cfg, beam = sp.sample(t); (cfg.d_model, cfg.n_enc_layers, beam)
(32, 1, 10)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..model import GRConfig

__all__ = ["SearchSpace"]


@dataclass(frozen=True)
class SearchSpace:
    widths: tuple[int, ...] = (32, 48, 64, 96, 128, 192)
    heads: tuple[int, ...] = (2, 4)
    enc_layers: tuple[int, ...] = (1, 2, 3)
    dec_layers: tuple[int, ...] = (1, 2)
    ffn_mults: tuple[int, ...] = (2, 4)
    beams: tuple[int, ...] = (10, 20)

    def sample(self, trial) -> tuple[GRConfig, int]:
        """A student config (task, levels and input length come from the teacher) and its beam."""
        d = trial.suggest_categorical("d_model", list(self.widths))
        nh = trial.suggest_categorical("n_heads", list(self.heads))
        cfg = GRConfig(d_model=d, n_heads=nh if d % nh == 0 else 1, n_enc_layers=trial.suggest_categorical("n_enc_layers", list(self.enc_layers)),
                       n_dec_layers=trial.suggest_categorical("n_dec_layers", list(self.dec_layers)),
                       ffn_mult=trial.suggest_categorical("ffn_mult", list(self.ffn_mults)), dropout=0.1)
        return cfg, int(trial.suggest_categorical("beam", list(self.beams)))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}
