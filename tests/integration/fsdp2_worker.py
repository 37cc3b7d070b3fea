"""Run by `test_fsdp2.py` under torchrun: cpo's log-prob forward on an FSDP2 (`fully_shard`)
model against the same weights unsharded. argv: model folder, output JSON path.

The chunked LM head reads `lm_head.weight` outside the module's own forward, which is exactly
what sharded parameters could break; this checks it rather than assuming it.
"""

from __future__ import annotations

import json
import random
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from cpo_cli.data.collate import collate_pairs
from cpo_cli.engine.forward import sequence_logps
from cpo_cli.engine.layout_probe import choose_layout


def _load(path: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.train()
    return model


def _full_grad(p: torch.nn.Parameter) -> torch.Tensor | None:
    g = p.grad
    return g.full_tensor() if isinstance(g, DTensor) else g


def main() -> None:
    model_dir, out_path = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    vocab = _load(model_dir).config.vocab_size
    rng = random.Random(0)
    rows = [
        {
            "prompt_input_ids": [rng.randrange(3, vocab) for _ in range(7 + i)],
            "chosen_input_ids": [rng.randrange(3, vocab) for _ in range(5)],
            "rejected_input_ids": [rng.randrange(3, vocab) for _ in range(3 + i)],
        }
        for i in range(3)
    ]
    report: dict[str, object] = {"world_size": dist.get_world_size()}
    for layout in ("packed", "pair_rows"):
        reference, sharded = _load(model_dir), _load(model_dir)
        for layer in sharded.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        chosen = choose_layout(sharded, prefix_sharing=layout == "packed")
        batch = collate_pairs(rows, pad_token_id=0, layout=chosen)
        # chunk 4: several chunks, so the head's backward recomputes its logits
        ref_out = sequence_logps(reference, batch, chunk_size=4)
        out = sequence_logps(sharded, batch, chunk_size=4)
        weights = torch.linspace(0.5, 1.5, ref_out.logps.numel())
        (ref_out.logps * weights).sum().backward()
        (out.logps * weights).sum().backward()
        worst, missing = 0.0, []
        for (name, p_ref), (_, p) in zip(
            reference.named_parameters(), sharded.named_parameters(), strict=True
        ):
            g = _full_grad(p)
            if g is None:
                missing.append(name)
                continue
            scale = float(p_ref.grad.abs().max()) + 1e-12
            worst = max(worst, float((g - p_ref.grad).abs().max()) / scale)
        report[layout] = {
            "layout_used": chosen,
            "logps_ref": ref_out.logps.tolist(),
            "logps_fsdp": out.logps.tolist(),
            "worst_rel_grad_diff": worst,
            "params_without_grad": missing,
        }
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
