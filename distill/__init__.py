"""Distillation fine-tune (`pip install 'cutq[train]'`): recover a pruned model's accuracy from its teacher's outputs.

torch is imported lazily and only inside this package, so the rest of cutq (and the runtime) never needs it.
`finetune.FinetuneConfig` imports without torch; `finetune.finetune` raises a `CutqError` naming the extra when
torch is missing.
"""
