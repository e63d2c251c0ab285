"""The paper presets against the reference's own run commands, key by key.

Each benchmark is run in the reference (cywinski/guide, README "Reproduction") by two commands of
scripts.image_train: one that trains the diffusion models with self-rehearsal, one that trains the
GUIDE classifier on replay from those models. Below, each command's flags are written out as literal
facts, with the script defaults (guide/script_args.py all_training_defaults, model_and_diffusion_defaults,
diffusion_defaults) for whatever the command leaves unset; `MAPPING` turns them into our params keys
and the tests assert equality key by key. Every reference setting is either used by `MAPPING` or
listed in `EXCEPTIONS` with the reason it has no counterpart here (or differs on purpose), and every
leaf of our params is either mapped or in `OURS_ONLY`: nothing is skipped silently.
"""
from __future__ import annotations

from typing import Callable

import pytest

from guide.diffusion import respaced_timesteps
from params import preset

# --- the reference's script defaults (guide/script_args.py), literal ------------------------------
REF_DEFAULTS = {
    # all_training_defaults
    "seed": 13, "data_seed": 0, "wandb_api_key": "", "wandb_experiment_name": "test",
    "wandb_project_name": "project", "wandb_entity": "entity", "dataroot": "data/", "dataset": "CIFAR10",
    "schedule_sampler": "uniform", "alpha": 4, "beta": 1.2, "lr": 2e-4, "disjoint_classifier_lr": 1e-2,
    "weight_decay": 0.0, "lr_anneal_steps": 0, "batch_size": 64, "microbatch": -1, "ema_rate": "0.9999",
    "log_interval": 500, "skip_save": False, "save_interval": 5000, "guid_generation_interval": 1,
    "resume_checkpoint": "", "resume_checkpoint_classifier": "", "resume_checkpoint_classifier_noised": "",
    "use_fp16": False, "fp16_scale_growth": 1e-3, "gpu_id": -1, "reverse": False, "num_tasks": 5,
    "limit_tasks": -1, "limit_classes": -1, "shared_classes": False, "train_aug": False,
    "skip_normalization": False, "num_steps": 20000, "scheduler_rate": 1.0, "first_task_num_classes": 0,
    "first_task_num_steps": -1, "skip_gradient_thr": -1, "log_gradient_stats": False, "clip_denoised": True,
    "cl_method": "generative_replay_disjoint_classifier_guidance", "use_ddim": False,
    "classifier_scale_min_old": None, "classifier_scale_min_new": None, "classifier_scale_max_old": None,
    "classifier_scale_max_new": None, "first_task": 0, "gr_n_generated_examples_per_task": 32,
    "use_old_grad": False, "use_new_grad": False, "guid_to_new_classes": False, "trim_logits": True,
    "train_with_disjoint_classifier": False, "disjoint_classifier_init_num_steps": 5000,
    "disjoint_classifier_num_steps": 2000, "classifier_init_lr": 0.1, "classifier_lr": 0.05,
    "classifier_weight_decay": 5e-4, "depth": 18, "classifier_augmentation": True,
    "diffusion_pretrained_dir": None, "negate_old_grad": False, "classifier_first_task_dir": None,
    # model_and_diffusion_defaults
    "num_channels": 128, "num_res_blocks": 3, "num_heads": 4, "num_heads_upsample": -1, "num_head_channels": -1,
    "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.1, "use_checkpoint": False,
    "use_scale_shift_norm": True, "resblock_updown": False, "use_new_attention_order": False,
    "image_size": 32, "in_channels": 3, "model_switching_timestep": 30, "model_name": "UNetModel",
    "embedding_kind": "concat_time_1hot", "model_num_classes": None, "train_noised_classifier": False,
    # diffusion_defaults
    "learn_sigma": False, "sigma_small": False, "diffusion_steps": 1000, "noise_schedule": "linear",
    "timestep_respacing": "", "use_kl": False, "predict_xstart": False, "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
}

# --- the README commands, literal (wandb_* flags left out: logging only) ---------------------------
_DIFFUSION_COMMON = {"seed": 0, "log_interval": 1000, "cl_method": "generative_replay",
                     "train_with_disjoint_classifier": False, "embedding_kind": "concat_time_1hot", "train_aug": True,
                     "first_task_num_steps": 100000}
_GUIDE_COMMON = {"seed": 0, "use_ddim": True, "cl_method": "generative_replay_disjoint_classifier_guidance",
                 "train_with_disjoint_classifier": True, "use_old_grad": False, "use_new_grad": True,
                 "guid_to_new_classes": True, "embedding_kind": "concat_time_1hot", "classifier_init_lr": 0.1,
                 "log_interval": 200}
_IMAGENET_UNET = {"attention_resolutions": "32,16,8", "lr": 1e-4, "resblock_updown": True,
                  "use_new_attention_order": True, "use_scale_shift_norm": True, "num_channels": 192,
                  "num_head_channels": 64}

COMMANDS = {  # preset: (diffusion command, GUIDE classifier command)
    "cifar10_2": (
        {**_DIFFUSION_COMMON, "batch_size": 256, "num_steps": 100000, "dataset": "CIFAR10", "num_tasks": 2,
         "save_interval": 100000, "gr_n_generated_examples_per_task": 25000, "timestep_respacing": "1000",
         "use_ddim": False},
        {**_GUIDE_COMMON, "batch_size": 256, "dataset": "CIFAR10", "num_tasks": 2, "timestep_respacing": "ddim50",
         "classifier_scale_min_new": 0.2, "classifier_scale_max_new": 0.2, "classifier_lr": 0.01,
         "disjoint_classifier_init_num_steps": 5000, "disjoint_classifier_num_steps": 2000,
         "classifier_augmentation": True, "diffusion_pretrained_dir": "results/c10_ci2_class_cond_diffusion"}),
    "cifar10_5": (
        {**_DIFFUSION_COMMON, "batch_size": 256, "num_steps": 50000, "dataset": "CIFAR10", "num_tasks": 5,
         "save_interval": 50000, "gr_n_generated_examples_per_task": 10000, "timestep_respacing": "1000",
         "use_ddim": False},
        {**_GUIDE_COMMON, "batch_size": 256, "dataset": "CIFAR10", "num_tasks": 5, "timestep_respacing": "ddim50",
         "classifier_scale_min_new": 0.5, "classifier_scale_max_new": 0.5, "classifier_lr": 0.01,
         "disjoint_classifier_init_num_steps": 5000, "disjoint_classifier_num_steps": 2000,
         "classifier_augmentation": True, "guid_generation_interval": 5,
         "diffusion_pretrained_dir": "results/c10_ci5_class_cond_diffusion"}),
    "cifar100_5": (
        {**_DIFFUSION_COMMON, "batch_size": 256, "num_steps": 50000, "dataset": "CIFAR100", "num_tasks": 5,
         "save_interval": 50000, "gr_n_generated_examples_per_task": 10000, "timestep_respacing": "1000",
         "use_ddim": False},
        {**_GUIDE_COMMON, "batch_size": 256, "dataset": "CIFAR100", "num_tasks": 5, "timestep_respacing": "ddim100",
         "classifier_scale_min_new": 0.5, "classifier_scale_max_new": 0.5, "classifier_lr": 0.05,
         "disjoint_classifier_init_num_steps": 10000, "disjoint_classifier_num_steps": 2000,
         "classifier_augmentation": True, "guid_generation_interval": 10,
         "diffusion_pretrained_dir": "results/c100_ci5_class_cond_diffusion"}),
    "cifar100_10": (
        {**_DIFFUSION_COMMON, "batch_size": 256, "num_steps": 100000, "dataset": "CIFAR100", "num_tasks": 10,
         "save_interval": 100000, "gr_n_generated_examples_per_task": 5000, "timestep_respacing": "1000",
         "use_ddim": False},
        {**_GUIDE_COMMON, "batch_size": 256, "dataset": "CIFAR100", "num_tasks": 10, "timestep_respacing": "ddim100",
         "classifier_scale_min_new": 1.0, "classifier_scale_max_new": 1.0, "classifier_lr": 0.05,
         "disjoint_classifier_init_num_steps": 10000, "disjoint_classifier_num_steps": 2000,
         "classifier_augmentation": True, "guid_generation_interval": 10,
         "diffusion_pretrained_dir": "results/c100_ci10_class_cond_diffusion"}),
    "imagenet100_64_5": (
        {**_DIFFUSION_COMMON, **_IMAGENET_UNET, "batch_size": 100, "num_steps": 50000, "dataset": "ImageNet100",
         "num_tasks": 5, "save_interval": 50000, "gr_n_generated_examples_per_task": 26000,
         "timestep_respacing": "ddim250", "use_ddim": True},
        {**_GUIDE_COMMON, **_IMAGENET_UNET, "batch_size": 100, "dataset": "ImageNet100", "num_tasks": 5,
         "timestep_respacing": "ddim50", "classifier_scale_min_new": 1.0, "classifier_scale_max_new": 1.0,
         "classifier_lr": 0.001, "disjoint_classifier_init_num_steps": 20000,
         "disjoint_classifier_num_steps": 20000, "classifier_augmentation": False, "guid_generation_interval": 15,
         "diffusion_pretrained_dir": "results/i100_ci5_class_cond_diffusion"}),
}

# --- facts of the reference's code that the mapping needs -----------------------------------------
# dataloaders/base.py: each dataset's name here, native image size and class count
DATASETS = {"CIFAR10": ("cifar10", 32, 10), "CIFAR100": ("cifar100", 32, 100),
            "ImageNet100": ("imagenet100_64", 64, 100)}
# create_model: channel_mult "" → by image size
CHANNEL_MULT = {32: (1, 2, 2, 2), 64: (1, 2, 3, 4)}
# dataloaders/base.py: only the CIFAR loaders build a classifier augmentation (ImageNet100 ignores the flag)
HAS_CLASSIFIER_AUGMENTATION = {"CIFAR10", "CIFAR100"}
DDIM_ETA = 0.0  # gaussian_diffusion.ddim_sample_loop's default; neither command sets it
SGD_MOMENTUM = 0.9  # train_util.TrainLoop: the classifier's SGD, hard-coded


def reference(cmd: dict) -> dict:
    """A command's effective settings: the script defaults, the command's flags, then
    script_args.preprocess_args (first_task_num_steps −1 → num_steps; a missing scale bound → the other)."""
    a = {**REF_DEFAULTS, **cmd}
    if a["first_task_num_steps"] == -1:
        a["first_task_num_steps"] = a["num_steps"]
    if a["classifier_scale_min_new"] is not None and a["classifier_scale_max_new"] is None:
        a["classifier_scale_max_new"] = a["classifier_scale_min_new"]
    if a["classifier_scale_max_new"] is not None and a["classifier_scale_min_new"] is None:
        a["classifier_scale_min_new"] = a["classifier_scale_max_new"]
    return a


def _steps(spec: str) -> list[int]:
    """A respacing as the timesteps it keeps ("1000" and "" both keep every step)."""
    return respaced_timesteps(1000, spec)


def _show(v) -> str:
    return f"{len(v)} steps {v[:3]}…{v[-1]}" if isinstance(v, list) and len(v) > 8 else repr(v)


def _method(c: dict) -> str:
    guided_new = (c["cl_method"] == "generative_replay_disjoint_classifier_guidance" and c["use_new_grad"]
                  and not c["use_old_grad"] and c["guid_to_new_classes"])
    return "guide" if guided_new else "?"


# our key: (the reference settings it comes from as "d.NAME" (diffusion command) / "c.NAME" (GUIDE
# classifier command), expected value from (d, c), how our value is read for the comparison)
Get = Callable[[dict, dict], object]
MAPPING: dict[str, tuple[tuple[str, ...], Get]] = {
    "run.seed": (("d.seed", "c.seed"), lambda d, c: c["seed"]),
    "run.method": (("c.cl_method", "c.use_new_grad", "c.use_old_grad", "c.guid_to_new_classes",
                    "c.train_with_disjoint_classifier", "d.cl_method", "d.train_with_disjoint_classifier"),
                   lambda d, c: _method(c)),
    "data.dataset": (("d.dataset", "c.dataset"), lambda d, c: DATASETS[c["dataset"]][0]),
    # None: the dataset's native size, which is the reference's (32 CIFAR, 64 ImageNet100)
    "data.image_size": (("d.image_size", "c.image_size"), lambda d, c: None),
    "data.num_tasks": (("d.num_tasks", "c.num_tasks"), lambda d, c: c["num_tasks"]),
    "data.first_task_classes": (("d.first_task_num_classes", "c.first_task_num_classes"),
                                lambda d, c: c["first_task_num_classes"] or None),
    # data_split takes classes 0..n−1 in order (the dataset's label order); None: natural order here too
    "data.class_order_seed": ((), lambda d, c: None),
    "diffusion.unet.model_channels": (("d.num_channels", "c.num_channels"), lambda d, c: d["num_channels"]),
    "diffusion.unet.num_res_blocks": (("d.num_res_blocks", "c.num_res_blocks"), lambda d, c: d["num_res_blocks"]),
    "diffusion.unet.channel_mult": (("d.channel_mult", "c.channel_mult"),
                                    lambda d, c: CHANNEL_MULT[DATASETS[d["dataset"]][1]] if d["channel_mult"] == ""
                                    else tuple(int(m) for m in d["channel_mult"].split(","))),
    "diffusion.unet.attention_resolutions": (("d.attention_resolutions", "c.attention_resolutions"),
                                             lambda d, c: tuple(int(r) for r in d["attention_resolutions"].split(","))),
    "diffusion.unet.num_heads": (("d.num_heads", "c.num_heads"), lambda d, c: d["num_heads"]),
    "diffusion.unet.num_head_channels": (("d.num_head_channels", "c.num_head_channels"),
                                         lambda d, c: d["num_head_channels"]),
    "diffusion.unet.dropout": (("d.dropout", "c.dropout"), lambda d, c: d["dropout"]),
    "diffusion.unet.class_cond": (("d.embedding_kind", "c.embedding_kind"), lambda d, c: d["embedding_kind"]),
    "diffusion.unet.use_scale_shift_norm": (("d.use_scale_shift_norm", "c.use_scale_shift_norm"),
                                            lambda d, c: d["use_scale_shift_norm"]),
    "diffusion.unet.resblock_updown": (("d.resblock_updown", "c.resblock_updown"), lambda d, c: d["resblock_updown"]),
    "diffusion.unet.use_new_attention_order": (("d.use_new_attention_order", "c.use_new_attention_order"),
                                               lambda d, c: d["use_new_attention_order"]),
    "diffusion.unet.precision": (("d.use_fp16", "c.use_fp16"), lambda d, c: "fp16" if d["use_fp16"] else "fp32"),
    "diffusion.schedule": (("d.noise_schedule", "c.noise_schedule"), lambda d, c: d["noise_schedule"]),
    "diffusion.num_timesteps": (("d.diffusion_steps", "c.diffusion_steps"), lambda d, c: d["diffusion_steps"]),
    "diffusion.steps_first": (("d.first_task_num_steps",), lambda d, c: d["first_task_num_steps"]),
    "diffusion.steps_later": (("d.num_steps",), lambda d, c: d["num_steps"]),
    "diffusion.batch_size": (("d.batch_size",), lambda d, c: d["batch_size"]),
    "diffusion.lr": (("d.lr",), lambda d, c: d["lr"]),
    "diffusion.weight_decay": (("d.weight_decay",), lambda d, c: d["weight_decay"]),
    "diffusion.ema_decay": (("d.ema_rate",), lambda d, c: float(d["ema_rate"])),
    "diffusion.hflip": (("d.train_aug",), lambda d, c: d["train_aug"]),
    # the diffusion command's --timestep_respacing builds the SpacedDiffusion it trains on
    "diffusion.train_respacing": (("d.timestep_respacing",), lambda d, c: _steps(d["timestep_respacing"])),
    # limit_tasks −1: the diffusion command trains every task, the last included
    "diffusion.train_last_task": (("d.limit_tasks",), lambda d, c: d["limit_tasks"] == -1),
    # cl_methods/generative_replay.py: gr_n_generated_examples_per_task per old task, sampled by the
    # training diffusion (its --timestep_respacing chain) with ddim_sample_loop if --use_ddim else
    # p_sample_loop, in batches of min(gr_n_generated_examples_per_task, batch_size)
    "rehearsal.per_task": (("d.gr_n_generated_examples_per_task",), lambda d, c: d["gr_n_generated_examples_per_task"]),
    "rehearsal.sampler": (("d.use_ddim",), lambda d, c: "ddim" if d["use_ddim"] else "ddpm"),
    "rehearsal.respacing": (("d.timestep_respacing",), lambda d, c: _steps(d["timestep_respacing"])),
    "rehearsal.eta": ((), lambda d, c: DDIM_ETA),
    "rehearsal.batch_size": (("d.gr_n_generated_examples_per_task", "d.batch_size"),
                             lambda d, c: min(d["gr_n_generated_examples_per_task"], d["batch_size"])),
    # train_util.TrainLoop.run_loop: replay drawn with the classifier command's diffusion (ddimN) and
    # sampler, (B // (t+1))·t images in one sampling batch (batch_size=-1); ours: one batch of up to B
    "replay.sampler": (("c.use_ddim",), lambda d, c: "ddim" if c["use_ddim"] else "ddpm"),
    "replay.respacing": (("c.timestep_respacing",), lambda d, c: _steps(c["timestep_respacing"])),
    "replay.eta": ((), lambda d, c: DDIM_ETA),
    "replay.batch_size": (("c.batch_size",), lambda d, c: c["batch_size"]),
    # regenerated inside the classifier loop every guid_generation_interval steps: one round, online
    "replay.rounds": ((), lambda d, c: 1),
    "guidance.mode": ((), lambda d, c: "online"),
    "guidance.scale": (("c.classifier_scale_min_new",), lambda d, c: c["classifier_scale_min_new"]),
    "guidance.scale_max": (("c.classifier_scale_max_new",), lambda d, c: c["classifier_scale_max_new"]),
    "guidance.clip_x0": (("c.clip_denoised", "d.clip_denoised"), lambda d, c: c["clip_denoised"]),
    "classifier.arch": (("c.depth",), lambda d, c: f"resnet{c['depth']}"),
    # the reference's ResNet has 64 channels in its first stage; ours: None, the architecture's own (64)
    "classifier.width": ((), lambda d, c: None),
    "classifier.steps_first": (("c.disjoint_classifier_init_num_steps",),
                               lambda d, c: c["disjoint_classifier_init_num_steps"]),
    "classifier.steps_later": (("c.disjoint_classifier_num_steps",), lambda d, c: c["disjoint_classifier_num_steps"]),
    "classifier.lr_first": (("c.classifier_init_lr",), lambda d, c: c["classifier_init_lr"]),
    "classifier.lr_later": (("c.classifier_lr",), lambda d, c: c["classifier_lr"]),
    "classifier.batch_size": (("c.batch_size",), lambda d, c: c["batch_size"]),
    "classifier.momentum": ((), lambda d, c: SGD_MOMENTUM),
    "classifier.weight_decay": (("c.classifier_weight_decay",), lambda d, c: c["classifier_weight_decay"]),
    "classifier.interval": (("c.guid_generation_interval",), lambda d, c: c["guid_generation_interval"]),
    "classifier.augmentation": (("c.classifier_augmentation",),
                                lambda d, c: "reference" if c["classifier_augmentation"]
                                and c["dataset"] in HAS_CLASSIFIER_AUGMENTATION else "none"),
}


def ours(p, key: str):
    """Our value for a mapped key, in the form MAPPING computes (respacings as their timestep lists,
    scale_max as the upper bound it stands for)."""
    if key == "guidance.scale_max":
        return p.guidance.bounds[1]
    if key == "diffusion.train_respacing":
        return _steps(p.diffusion.train_respacing)
    value = p
    for part in key.split("."):
        value = getattr(value, part)
    if key in ("rehearsal.respacing", "replay.respacing"):
        return _steps(value)
    return tuple(value) if isinstance(value, (list, tuple)) else value


# --- the record: reference settings with no counterpart here, or different on purpose --------------
EXCEPTIONS = {
    # logging, checkpoints, plumbing
    "wandb_api_key": "logging (ours: tracking.*)", "wandb_experiment_name": "logging (ours: tracking.*)",
    "wandb_project_name": "logging (ours: tracking.*)", "wandb_entity": "logging (ours: tracking.*)",
    "log_interval": "logging cadence; ours logs the loss every 50 steps", "log_gradient_stats": "logging",
    "save_interval": "checkpoint cadence; each of our stages writes its checkpoint once, at its end",
    "skip_save": "checkpointing", "resume_checkpoint": "resuming; ours: DVC reruns a stage",
    "resume_checkpoint_classifier": "resuming", "resume_checkpoint_classifier_noised": "resuming",
    "diffusion_pretrained_dir": "where the classifier command finds the diffusion models; ours: DVC artifacts",
    "classifier_first_task_dir": "unset in every command (would load a task-0 classifier)",
    "dataroot": "file location (ours: data.root)", "gpu_id": "device choice (ours: run.device)",
    "data_seed": "seeds only a validation split, which is empty (validation_frac=0.0) in image_train",
    # settings that select behaviour ours has fixed to the reference's default (no setting here)
    "learn_sigma": "False: ours predicts ε only (out_channels = in_channels), as the reference's default",
    "sigma_small": "False: ours uses the 'fixed large' variance, the reference's default",
    "use_kl": "False: ours trains the simple ε MSE only", "predict_xstart": "False: ours predicts ε only",
    "rescale_timesteps": "False: ours feeds the network the integer timestep",
    "rescale_learned_sigmas": "only with learned σ, which neither has",
    "schedule_sampler": "'uniform': ours draws t uniformly (epsilon_loss), no other sampler",
    "alpha": "only for the non-uniform schedule samplers", "beta": "only for the non-uniform schedule samplers",
    "lr_anneal_steps": "0: the diffusion learning rate is constant in both",
    "scheduler_rate": "1.0: ExponentialLR with gamma 1, a constant diffusion learning rate, as ours",
    "microbatch": "−1 (off): ours trains on the whole batch (or splits it over data-parallel ranks)",
    "skip_gradient_thr": "−1 (off): ours clips or skips nothing",
    "use_checkpoint": "gradient checkpointing: memory only",
    "fp16_scale_growth": "only with use_fp16, which is off (ours: precision fp32)",
    "num_heads_upsample": "−1 (= num_heads): our UNet always uses num_heads in the upsampling blocks",
    "model_name": "'UNetModel': the one model here", "model_switching_timestep": "unused by UNetModel",
    "train_noised_classifier": "False: ours guides through x̂₀ with the clean-image classifier, the "
                               "reference's default",
    "trim_logits": "True: ours always restricts guidance and loss to the classes seen so far",
    "negate_old_grad": "old-class guidance is off in GUIDE (use_old_grad False); ours has it as run.method ddgr",
    "classifier_scale_min_old": "old-class guidance is off in GUIDE",
    "classifier_scale_max_old": "old-class guidance is off in GUIDE",
    "disjoint_classifier_lr": "read nowhere in the reference (its loop reads classifier_init_lr/classifier_lr)",
    "reverse": "False: no reversed class order here", "shared_classes": "False: class-incremental tasks only",
    "limit_classes": "−1: every class", "first_task": "0: every task is run",
    "skip_normalization": "False: [−1, 1] images in both",
    "in_channels": "set from the dataset in both", "model_num_classes": "set from the dataset in both",
}
# Reference behaviour that no preset key expresses, checked against the code here: rehearsal sampled
# from diffusion(t−1)'s live weights, labels uniform over the old classes, per_task·t rounded up to
# whole batches of rehearsal.batch_size (so rehearsal.batch_size = min(gr_n, B) also fixes the count:
# CIFAR-10/5, t = 1: 40·256 = 10,240), a fresh EMA each task, epoch-shuffled minibatches — all as the
# reference does (stages/rehearsal.py, stages/diffusion.py, guide.continual). What still differs:
BEHAVIOUR = {
    "random streams": "seed 0 in both, but the generators and the order of draws differ",
}
# Our params with no reference setting: the oracle (judges replay), evaluation, tracking, and how
# the run is executed (device, threads, data-parallel processes).
OURS_ONLY_GROUPS = ("oracle.", "evaluate.", "tracking.", "data.synthetic.")
OURS_ONLY = {"run.device", "run.threads", "run.devices", "run.resume_every", "data.root"}

PRESETS = tuple(COMMANDS)


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


@pytest.mark.parametrize("name", PRESETS)
def test_preset_equals_the_reference_commands_key_by_key(name):
    d, c = (reference(cmd) for cmd in COMMANDS[name])
    p = preset(name)
    wrong = [f"{key}: ours {_show(ours(p, key))}, reference {_show(want(d, c))} (from {', '.join(refs) or 'its code'})"
             for key, (refs, want) in MAPPING.items() if ours(p, key) != want(d, c)]
    assert not wrong, f"preset {name} differs from the reference README's commands:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", PRESETS)
def test_the_two_reference_commands_agree_where_they_share_a_setting(name):
    """The classifier command loads the diffusion command's models, so both describe the same UNet,
    schedule, dataset and tasks; a mapping that reads either would be wrong if they disagreed."""
    d, c = (reference(cmd) for cmd in COMMANDS[name])
    # the settings a MAPPING entry reads from both commands
    shared = {r[2:] for refs, _ in MAPPING.values() for r in refs if r.startswith("d.") and f"c.{r[2:]}" in refs}
    shared -= {"cl_method", "train_with_disjoint_classifier"}  # what each command does (run.method)
    assert "num_channels" in shared and "dataset" in shared
    assert {k: d[k] for k in shared} == {k: c[k] for k in shared}


def test_every_reference_setting_is_mapped_or_a_listed_exception():
    used = {r[2:] for refs, _ in MAPPING.values() for r in refs}
    flags = set(REF_DEFAULTS) | {k for cmds in COMMANDS.values() for cmd in cmds for k in cmd}
    unaccounted = sorted(flags - used - set(EXCEPTIONS))
    assert not unaccounted, f"reference settings neither mapped nor listed in EXCEPTIONS: {unaccounted}"
    assert not (set(EXCEPTIONS) - flags), "EXCEPTIONS lists settings the reference does not have"
    assert not (used - flags), "MAPPING reads settings the reference does not have"
    assert not (used & set(EXCEPTIONS)), "a setting is both mapped and listed as an exception"


def test_every_key_of_ours_is_mapped_or_ours_only():
    leaves = _leaves(preset("cifar10_5").model_dump(mode="json"))
    ours_only = {k for k in leaves if k.startswith(OURS_ONLY_GROUPS)} | OURS_ONLY
    assert sorted(set(leaves) - set(MAPPING) - ours_only) == []
    assert not (set(MAPPING) - set(leaves)), "MAPPING names keys our params do not have"
    assert not (set(MAPPING) & ours_only)
