"""LoRA (Hu et al. 2021) through peft, saved in the kohya format every host loads.

The targets are exactly kohya's (formats.lora_keys), so every trained module has a
`lora_unet_…`/`lora_te…` key in the file; 3×3 convolutions (LoCon) train at `conv_rank`
when it is set.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, SaveInfo

if TYPE_CHECKING:
    import torch

    from ..events import Artifact

ADAPTER = "default"


class LoraMethod(Method):
    name = "lora"

    @property
    def trains_text_encoder(self) -> bool:
        return self.config.train_text_encoder

    @property
    def conv_alpha(self) -> float:
        """`conv_alpha`, by default the linear layers' alpha/rank scale at `conv_rank`."""
        cfg = self.config
        return cfg.conv_alpha if cfg.conv_alpha is not None else cfg.conv_rank * cfg.alpha / cfg.rank

    def lora_config(self, module: "torch.nn.Module", targets: list[str]):
        """peft config of the network type for `targets` of `module`: `rank`/`alpha`, and
        `conv_rank`/`conv_alpha` for 3×3 convolutions (conv_alpha defaults to the linear
        layers' alpha/rank scale)."""
        import torch

        from ..formats.networks import network_type

        cfg = self.config
        modules = dict(module.named_modules())
        convs = [t for t in targets if isinstance(modules[t], torch.nn.Conv2d) and modules[t].kernel_size != (1, 1)]
        conv_alpha = self.conv_alpha
        return network_type(cfg.network).config(targets, cfg.rank, cfg.alpha, {t: (cfg.conv_rank, conv_alpha) for t in convs})

    def prepare(self) -> None:
        # peft's own injection, not diffusers' or transformers' `add_adapter`: those wrap the
        # same call behind their own peft version checks, so a transformers release that
        # demands a newer peft would stop text-encoder LoRA although peft itself is fine.
        from peft import inject_adapter_in_model

        from ..formats.lora_keys import lora_target_modules

        m, cfg = self.model, self.config
        targets = lora_target_modules(m.unet, conv=cfg.conv_rank > 0)
        inject_adapter_in_model(self.lora_config(m.unet, targets), m.unet, adapter_name=ADAPTER)
        if self.trains_text_encoder:
            for te in m.text_encoders:
                inject_adapter_in_model(self.lora_config(te, lora_target_modules(te)), te, adapter_name=ADAPTER)
        if cfg.network != "lora":
            from ..train.packed_convs import keep_dense

            for name in targets:  # LyCORIS and DoRA layers read their base weight (shape, norm) at every step
                keep_dense(m.unet.get_submodule(name).get_base_layer())

    def trainable_modules(self) -> dict[str, "torch.nn.Module"]:
        out: dict[str, torch.nn.Module] = {"unet": self.model.unet}
        if self.trains_text_encoder:
            out.update(zip(self.model.family.text_encoders, self.model.text_encoders))
        return out

    def plain_architecture(self):
        """This model's module tree without the injected adapters (on the meta device: free),
        which is what peft-layout module names refer to."""
        from ..models.configs import empty_base_model, model_configs

        return empty_base_model(self.model.family, model_configs(self.model))

    def save(self, info: SaveInfo) -> list["Artifact"]:
        from ..events import Artifact
        from ..formats.lora import lora_from_peft_model, write_kohya, write_peft

        cfg, family = self.config, self.model.family
        tes = self.model.text_encoders if self.trains_text_encoder else []
        if cfg.network != "lora":
            return [self.save_lycoris(info, tes)]
        weights = lora_from_peft_model(self.model.unet, tes, family, adapter_name=ADAPTER)
        # the writers derive the network facts (dim, alpha, conv args) from the tensors
        meta = {**self.common_metadata(info), "modelspec.trigger_phrase": self.trigger(info)}
        weights.metadata.update(meta)  # what write_peft carries (ss_* and modelspec.*)
        out = []
        if "kohya" in cfg.formats:
            path = self.host_path(info)
            write_kohya(weights, path, family, meta, overwrite=info.overwrite)
            out.append(self.host_artifact(path, info))
        if "peft" in cfg.formats:
            # diffusers' load_lora_weights(folder) finds this file name by default
            path = info.out_dir / f"{info.stem}-peft" / "pytorch_lora_weights.safetensors"
            write_peft(weights, path, family, base=self.plain_architecture(), overwrite=info.overwrite)
            out.append(Artifact(kind="lora", path=str(path), name=info.stem, final=info.final))  # for diffusers, not the hosts
        return out

    def save_lycoris(self, info: SaveInfo, text_encoders: list) -> "Artifact":
        """A LoHa/LoKr/DoRA network in the LyCORIS layout the hosts read (formats.networks)."""
        from ..formats.networks import lycoris_from_peft_model, network_type, write_lycoris

        cfg = self.config
        net = network_type(cfg.network)
        modules = lycoris_from_peft_model(net, self.model.unet, text_encoders, self.model.family, ADAPTER)
        meta = {**self.common_metadata(info), "modelspec.trigger_phrase": self.trigger(info)}
        path = self.host_path(info)
        write_lycoris(net, modules, path, self.model.family, cfg.rank, cfg.alpha,
                      (cfg.conv_rank, self.conv_alpha) if cfg.conv_rank else None, meta, overwrite=info.overwrite)
        return self.host_artifact(path, info)
