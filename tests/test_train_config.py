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
