"""Scoring throughput (summed target log-likelihood, teacher-forced) of the Flax T5 against a PyTorch
`transformers` forward pass, on the same random weights.

    python benchmarks/score.py [--config t5_1_0_small --batch_size 16 --input_length 200 \
        --decode_length 128 --out score.json]
"""

import common
import torch

from tinythinker_jax.models import scoring


def main() -> None:
    args = common.parser(__doc__, "score.json").parse_args()
    model, reference, device = common.models(args.config, args.dtype, args.seed, scan_layers=args.scan_layers)
    inputs, targets = common.token_batches(args)
    torch_inputs, torch_targets = torch.tensor(inputs, device=device), torch.tensor(targets, device=device)

    def ours():
        scoring.score(model, inputs.tolist(), targets.tolist(), batch_size=args.batch_size,
                      max_input_length=args.input_length, max_target_length=args.decode_length)

    def theirs():
        with torch.no_grad():
            logits = reference(input_ids=torch_inputs, labels=torch_targets).logits.float()
            torch.log_softmax(logits, -1).gather(-1, torch_targets[..., None]).sum().item()

    common.write_report(args, device, common.compare({"score": (ours, theirs)}, targets.size, args.repeats))


if __name__ == "__main__":
    main()
