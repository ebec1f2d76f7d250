"""Built-in task plugins: the LoFiT paper's TruthfulQA, CLUTRR and MQuAKE protocols."""
