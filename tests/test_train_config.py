import pytest

from osr.train.config import TrainConfig, build_parser, config_from_args


def test_cli_overrides_and_types():
    cfg = config_from_args(["--dataset", "mnist", "--split", "2", "--width", "0.5", "--epochs", "3",
                            "--max-train-per-class", "10", "--randaugment", "false", "--lr-milestones", "0.5", "0.9"])
    assert (cfg.dataset, cfg.split, cfg.width, cfg.epochs, cfg.max_train_per_class) == ("mnist", 2, 0.5, 3, 10)
    assert cfg.randaugment is False and cfg.lr_milestones == (0.5, 0.9)
    assert cfg.run_dir.endswith("mnist-s2-classifier32-ce-seed0")


def test_invalid_choices_list_valid_ones(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--arch", "vgg"])
    assert "resnet18" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid are ce, kd, ad"):
        TrainConfig(method="arpl")


def test_distillation_needs_teacher_and_defaults_to_cutmix():
    with pytest.raises(ValueError, match="needs --teacher"):
        TrainConfig(method="ad")
    assert TrainConfig(method="ad", teacher="t.pt").mix == "cutmix"


def test_digest_ignores_output_location():
    assert TrainConfig(out="a").digest() == TrainConfig(out="b").digest() != TrainConfig(seed=1).digest()


def test_command_line_rebuilds_the_same_config():
    """The report's osr-train line gives back the run's config (same digest)."""
    import shlex

    from osr.train.config import command_line, config_from_args

    cfg = config_from_args(["--arch", "efficientnet_lite0", "--pretrained", "imagenet", "--input-size", "64",
                            "--method", "ad", "--teacher", "runs/t", "--lr-milestones", "0.5", "0.8",
                            "--randaugment", "false", "--max-train-per-class", "300"])
    line = command_line(cfg.to_dict())
    assert line.startswith("osr-train --dataset cifar10 --split 0 ")
    again = config_from_args(shlex.split(line)[1:])
    assert again.digest() == cfg.digest()


def test_command_line_carries_the_data_root_and_reruns_as_written():
    """The data root is always written out (its default depends on OSR_DATA_ROOT where the line is run),
    and values that need quoting are quoted, so the line parses back to the same config."""
    import shlex

    from osr.train.config import command_line, config_from_args

    cfg = config_from_args(["--dataset", "imagefolder", "--data-root", "my data/folders", "--image-size", "28",
                            "--out", "runs/my classes"])
    line = command_line(cfg.to_dict())
    assert line.startswith("osr-train --dataset imagefolder --split 0 --data-root 'my data/folders' ")
    again = config_from_args(shlex.split(line)[1:])
    assert again.to_dict() == cfg.to_dict()
    default_root = config_from_args([])
    assert f"--data-root {default_root.data_root}" in command_line(default_root.to_dict())


def test_eval_every_does_not_change_the_digest_and_older_runs_stay_resumable():
    """Test metrics are reporting only: --eval-every is outside the digest, hashed at 1 (its default until
    evaluation moved to the end of a run), so runs checkpointed before keep their digests."""
    import hashlib
    import json

    from osr.train.config import _ADDED_LATER, _NOT_IN_DIGEST

    assert TrainConfig().eval_every == 0
    assert TrainConfig().digest() == TrainConfig(eval_every=1).digest() == TrainConfig(eval_every=7).digest()
    # the digest an older osr-train wrote for a default run (eval_every 1 in the hashed config)
    old = {k: v for k, v in TrainConfig(eval_every=1).to_dict().items() if k not in _NOT_IN_DIGEST}
    old = {k: v for k, v in old.items() if not (k in _ADDED_LATER and v == _ADDED_LATER[k])}
    assert TrainConfig().digest() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    with pytest.raises(ValueError, match="eval_every must be 0"):
        TrainConfig(eval_every=-1)
