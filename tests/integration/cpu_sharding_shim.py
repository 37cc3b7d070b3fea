"""`cpo` with accelerate's FSDP and DeepSpeed modes allowed on CPU processes: TEST ONLY.

accelerate turns FSDP and DeepSpeed on only with accelerator devices: with `cpu=True` it keeps
a multi-process CPU group as plain DDP (MULTI_CPU) and ignores the plugins. FSDP2's
`fully_shard` and DeepSpeed's ZeRO run on a gloo group all the same, so this shim does the one
thing accelerate refuses: once the two-process CPU group has formed, it switches the state to
FSDP / DEEPSPEED with the plugin cpo passed, exactly as accelerate's own GPU branch does
(`AcceleratorState.__init__`). Everything else (prepare, backward, clipping, state dicts,
save_state/load_state) is accelerate's, FSDP's and DeepSpeed's own code.

It also keeps DeepSpeed from JIT-compiling its shared-memory CPU all-reduce (a C++ build at
first use): collectives then go through torch's gloo backend.

Run as `torchrun --nproc_per_node 2 cpu_sharding_shim.py train RECIPE [overrides]`.
"""

from __future__ import annotations

import sys


def install() -> None:
    import accelerate.state as state_module
    from accelerate.utils import DistributedType

    original = state_module.AcceleratorState.__init__

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        fsdp, deepspeed = kwargs.get("fsdp_plugin"), kwargs.get("deepspeed_plugin")
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp is not None:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp
        elif deepspeed is not None:
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed.set_mixed_precision(self._mixed_precision)
            deepspeed.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed
            self._mixed_precision = "no"
        else:
            return
        state_module.PartialState._shared_state["distributed_type"] = self.distributed_type

    state_module.AcceleratorState.__init__ = init  # type: ignore[method-assign]
    try:
        import deepspeed.comm.torch as ds_torch
    except ImportError:
        return
    ds_torch.build_shm_op = lambda: None


if __name__ == "__main__":
    install()
    from cpo_cli.cli import run

    sys.exit(run(sys.argv[1:]))
