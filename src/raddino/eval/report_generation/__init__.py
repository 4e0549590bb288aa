"""Report generation: frozen RadDino patch tokens -> MLP projector -> causal language model.

Modules: ``lm`` (a small tokenizer + decoder for CPU use), ``model`` (projector, prompt splicing),
``data`` (image tokens of manifest rows), ``train`` (stage 1 projector, stage 2 LoRA),
``generate`` (greedy / beam), ``labeller`` (rule-based findings), ``metrics`` (BLEU, ROUGE-L,
clinical P/R/F1).
"""
