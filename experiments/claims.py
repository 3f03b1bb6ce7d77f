"""The claims of the five source reports' text, each with the rule that decides it on our records
(`experiments.verdicts`). A claim names the number the source gives; configurations are named as
the full-protocol flagfiles name them (a smoke preset that lacks one gives 'not run')."""
from __future__ import annotations

from experiments.verdicts import (Claim, above, all_of, best, best_level, best_param, close, fails, greater, near,
                                  range_end, ratio, spread, trend, u_shape)

CIFAR_TEST = 10_000
SEED004_SCALES = ("0.0001", "0.000162378", "0.000263665", "0.000428133", "0.000695193", "0.00112884", "0.00183298",
                  "0.00297635", "0.00483293", "0.0078476", "0.0127427", "0.0206914", "0.0335982", "0.0545559",
                  "0.0885867", "0.143845", "0.233572", "0.379269", "0.615848", "1")
NINE = "hidden=50-30-20-20-10-10-10-10"
FINE_TUNE = tuple(f"fine_tune,lr={lr}" for lr in ("1e-05", "0.0001", "0.001", "0.01", "0.1"))
PROBE = tuple(f"linear_probe,lr={lr}" for lr in ("1e-05", "0.0001", "0.001", "0.01", "0.1"))
SCRATCH = tuple(f"scratch,lr={lr}" for lr in ("1e-05", "0.0001", "0.001", "0.01", "0.1"))
LADDER = "seed001_ladder"
SCALED = tuple(f"batch_size={b},lr={0.01 * b / 64:g}" for b in (1, 4, 16, 64, 256, 1024))  # seed003_batch_size_scaled

CLAIMS: dict[str, tuple[Claim, ...]] = {
    "seed000": (
        Claim("unstable", "1.1", "Learning is unstable at LR ≥ 0.15 (the range test's top end)",
              range_end("lr_sweep/range_test", "unstable", 0.15)),
        Claim("no_learning", "1.1", "No learning occurs at LR ≤ 0.001 (the range test's bottom end)",
              range_end("lr_sweep/range_test", "no_learning", 0.001)),
        Claim("best_static", "1.1", "0.05 is the best static learning rate (test accuracy)",
              best("lr_sweep", "test_acc", "lr=0.05")),
        Claim("schedule_100", "1.2", "The inverse-time schedule reaches ~100% training accuracy (≥ 99% at some epoch)",
              above(("lr_schedule", "inverse_time lr0=0.1 k=0.25"), "best_train_acc", 0.99)),
        Claim("static_not_100", "1.2", "…which no static-LR model did (LR 0.05 stays below 99%)",
              above(("lr_schedule", "constant lr=0.05"), "best_train_acc", 0.99, below=True)),
        Claim("schedule_steady", "1.2", "The scheduled model's validation accuracy is steadier than LR 0.05's "
              "(smaller spread over the last quarter of the epochs)",
              greater(("lr_schedule", "constant lr=0.05"), ("lr_schedule", "inverse_time lr0=0.1 k=0.25"), "val_wobble")),
        Claim("best_dropout", "2.1", "Dropout 0.6 is the best rate (test accuracy)",
              best("dropout_sweep", "test_acc", "dropout=0.6")),
        Claim("gap_shrinks", "2.1", "The generalisation gap (train − validation accuracy) shrinks as the rate rises",
              trend("dropout_sweep", [f"dropout={r}" for r in ("0", "0.2", "0.4", "0.6", "0.8")], "gap", rising=False)),
        Claim("bn_overfits", "3.4", "BatchNormNet overfits quickly: its validation loss turns up in the first half "
              "of training", u_shape(("batchnorm", "BatchNormNet"), by_fraction=0.5)),
    ),
    "seed001": (
        Claim("lr_extremes", "2.1", "LR 1 fails to converge and LR 1e-5 learns far slower than 0.1 (≥ 10 points "
              "behind after 20 epochs)",
              all_of(fails([("seed001_lr", "lr=1")]),
                     greater(("seed001_lr", "lr=0.1"), ("seed001_lr", "lr=1e-05"), "test_acc", 0.10))),
        Claim("batch8_time", "2.2", "An epoch at batch 8 takes far longer than at batch 128 (37 s, 'a lot more than "
              "the previous ones'): at least twice as long",
              ratio(("seed001_batch_size", "batch_size=8"), ("seed001_batch_size", "batch_size=128"), "run_seconds", 2.0)),
        Claim("untrained_loss", "2.3", "The untrained network's loss is 2.3017 (≈ ln 10)",
              near((f"{LADDER}/baseline", "baseline"), "untrained_val_loss", 2.3017, tol=0.05)),
        Claim("untrained_acc", "2.3", "The untrained network's top-1 is 7.8% and top-5 50.8% (one batch of 128 images)",
              all_of(near((f"{LADDER}/baseline", "baseline"), "untrained_val_acc", 0.078, n_source=128),
                     near((f"{LADDER}/baseline", "baseline"), "untrained_val_top5", 0.508, n_source=128))),
        Claim("baseline_70", "2.3", "The baseline reaches ≈ 70% test accuracy",
              near((f"{LADDER}/baseline", "baseline"), "test_acc", 0.70, n_source=CIFAR_TEST)),
        Claim("baseline_u", "2.3", "The baseline's validation loss has a U shape (overfitting)",
              u_shape((f"{LADDER}/baseline", "baseline"))),
        Claim("standardised_70", "3.1", "Standardisation lifts test accuracy a little above 70%",
              all_of(above((f"{LADDER}/standardised", "standardised"), "test_acc", 0.70),
                     greater((f"{LADDER}/standardised", "standardised"), (f"{LADDER}/baseline", "baseline"), "test_acc"))),
        Claim("augmented_80", "3.3", "Augmentation brings test accuracy to almost 80%",
              near((f"{LADDER}/augmented", "augmented"), "test_acc", 0.80, n_source=CIFAR_TEST)),
        Claim("final_80", "3.5", "The final model (dropout and batch norm, 100 epochs) exceeds 80% test accuracy",
              above((f"{LADDER}/batch_norm_long", "batch_norm_long"), "test_acc", 0.80)),
        Claim("final_loss", "3.5", "…with a test loss of about 0.6 (within 0.1)",
              near((f"{LADDER}/batch_norm_long", "batch_norm_long"), "test_loss", 0.6, tol=0.1)),
        Claim("final_no_u", "3.5", "…and without overfitting (no U in its validation loss)",
              u_shape((f"{LADDER}/batch_norm_long", "batch_norm_long"), present=False)),
    ),
    "seed002": (
        Claim("bn_2layer", "2", "Batch norm barely changes the 2-layer net (53.36% → 53.37%): within 1 point",
              close(("seed002_nets", "hidden=50-50,norm=batch,init=he"), ("seed002_nets", "hidden=50-50,norm=none,init=he"),
                    "test_acc", 0.01)),
        Claim("bn_9layer", "2", "Batch norm helps the 9-layer net (40.37% → 43.76%)",
              greater(("seed002_nets", f"{NINE},norm=batch,init=he"), ("seed002_nets", f"{NINE},norm=none,init=he"),
                      "test_acc")),
        Claim("lambda_decade", "3", "The best λ lies between 1e-3 and 1e-2 (the report's 0.005623)",
              best_param("seed002_lambda/fine", "val_acc", "l2", 1e-3, 1e-2)),
        Claim("small_init_chance", "4", "Without batch norm, σ ≤ 1e-3 stays at chance (10%)",
              fails([("seed002_init", "norm=none,init_scale=0.001"), ("seed002_init", "norm=none,init_scale=0.0001")])),
        Claim("small_init_bn", "4", "With batch norm, σ ≤ 1e-3 still trains (the report: ~48%; here > 40%)",
              all_of(above(("seed002_init", "norm=batch,init_scale=0.001"), "test_acc", 0.40),
                     above(("seed002_init", "norm=batch,init_scale=0.0001"), "test_acc", 0.40))),
        Claim("small_init_cost", "4", "…ending at a cost of about ln 10 (2.29–2.30, a near-uniform softmax) yet 48% "
              "accuracy: our final validation cost within 0.05 of 2.30",
              near(("seed002_init", "norm=batch,init_scale=0.001"), "val_cost", 2.30, tol=0.05)),
        Claim("depth_best", "5.1", "The 6-layer net (80, …, 30) is the best of the depth study",
              best("seed002_depth", "test_acc", "hidden=80-70-60-50-40-30")),
        Claim("depth_worst", "5.1", "The 12-layer net is the worst of the depth study (45.61%)",
              best("seed002_depth", "test_acc", "hidden=120-110-100-90-80-70-60-50-40-30-20-10", worst=True)),
        Claim("dropout_bn", "5.2", "With dropout 0.5, batch norm helps a great deal (31.74% → 47.07%)",
              greater(("seed002_dropout", "norm=batch"), ("seed002_dropout", "norm=none"), "test_acc", 0.05)),
    ),
    "seed003": (
        Claim("lr_high", "6.1.1", "LR 1 is too high: the net fails to learn", fails([("seed003_lr", "lr=1")])),
        Claim("lr_low", "6.1.1", "LR 1e-5 keeps improving but ends far from a good result (≥ 10 points below LR 0.01)",
              greater(("seed003_lr", "lr=0.01"), ("seed003_lr", "lr=1e-05"), "test_acc", 0.10)),
        Claim("epochs_u", "6.1.2", "Validation loss falls until about epoch 50 and has risen by epoch 100",
              u_shape(("seed003_epochs", "mlp_256-128"), by_fraction=0.8)),
        Claim("bn_generalises", "6.1.3", "Batch norm gives higher validation and test accuracy",
              all_of(greater(("seed003_bn", "norm=batch"), ("seed003_bn", "norm=none"), "val_acc"),
                     greater(("seed003_bn", "norm=batch"), ("seed003_bn", "norm=none"), "test_acc"))),
        Claim("bn_train_lower", "6.1.3", "…but lower training accuracy",
              greater(("seed003_bn", "norm=none"), ("seed003_bn", "norm=batch"), "train_acc")),
        Claim("batch_accuracy", "6.1.4", "Larger batches give better test accuracy",
              trend("seed003_batch_size", [f"batch_size={b}" for b in (1, 4, 16, 64, 256, 1024)], "test_acc", rising=True)),
        Claim("batch_speed", "6.1.4", "Larger batches train faster (seconds per epoch fall)",
              trend("seed003_batch_size", [f"batch_size={b}" for b in (1, 4, 16, 64, 256, 1024)], "run_seconds",
                    rising=False)),
        Claim("batch_noise", "6.1.4", "Larger batches give a less noisy loss curve",
              trend("seed003_batch_size", [f"batch_size={b}" for b in (1, 4, 16, 64, 256, 1024)], "loss_noise",
                    rising=False)),
        Claim("batch_accuracy_scaled", "6.1.4b", "Larger batches give better test accuracy also at an LR scaled with "
              "the batch (not the source's test: whether the batch size or the number of steps decides)",
              trend("seed003_batch_size_scaled", SCALED, "test_acc", rising=True)),
        Claim("grid_best", "6.2", "6 hidden layers of 32 is the best net by validation accuracy (the report: 93.98%)",
              best("seed003_grid", "val_acc", "hidden=32-32-32-32-32-32")),
        Claim("grid_worst", "6.2", "10 hidden layers of 16 is the worst net by validation accuracy (89.49%)",
              best("seed003_grid", "val_acc", "hidden=" + "-".join(["16"] * 10), worst=True)),
        Claim("fine_tune_best", "7", "Fine-tuning is best at LR 1e-4 (83.75% test)",
              best("seed003_cnn/target", "test_acc", "fine_tune,lr=0.0001", among=FINE_TUNE)),
        Claim("fine_tune_collapse", "7", "Fine-tuning collapses to chance at LR ≥ 1e-2 (51.0%, 49.25%)",
              fails([("seed003_cnn/target", "fine_tune,lr=0.01"), ("seed003_cnn/target", "fine_tune,lr=0.1")])),
        Claim("probe_best", "7", "The linear probe is best at LR 1e-2 (71.5% test)",
              best("seed003_cnn/target", "test_acc", "linear_probe,lr=0.01", among=PROBE)),
        Claim("scratch_flat", "7", "From scratch, every LR stays near 50% after one epoch (below 60%)",
              all_of(*(above(("seed003_cnn/target", c), "test_acc", 0.60, below=True) for c in SCRATCH))),
    ),
    "seed004": (
        Claim("overfit_50", "1.1", "With weight scale 5e-2, LR 1e-3 and 2e-3 overfit the 50 images (≥ 95% train)",
              all_of(above(("seed004_overfit", "lr=0.002,init_scale=0.05"), "best_train_acc", 0.95),
                     above(("seed004_overfit", "lr=0.001,init_scale=0.05"), "best_train_acc", 0.95))),
        Claim("small_scale_slow", "1.1", "Weights too small (1e-2) delay convergence (≥ 20 points less training "
              "accuracy at LR 1e-3)",
              greater(("seed004_overfit", "lr=0.001,init_scale=0.05"), ("seed004_overfit", "lr=0.001,init_scale=0.01"),
                      "train_acc", 0.20)),
        Claim("bn_helps", "2.1", "Batch norm makes the net learn better than no normalisation (validation accuracy)",
              greater(("seed004_norms", "norm=batch"), ("seed004_norms", "norm=none"), "val_acc")),
        Claim("bn_batch_size", "2.2", "With batch norm, larger batches give better accuracy",
              trend("seed004_batch_size", [f"norm=batch,batch_size={b}" for b in (5, 10, 50)], "val_acc", rising=True)),
        Claim("ln_batch_size", "2.2", "Layer norm depends less on the batch size than batch norm",
              spread("seed004_batch_size", [f"norm=layer,batch_size={b}" for b in (5, 10, 50)],
                     [f"norm=batch,batch_size={b}" for b in (5, 10, 50)], "val_acc")),
        Claim("bn_scale", "2.3", "Batch norm is less sensitive to the weight scale than the baseline",
              spread("seed004_weight_scale", [f"norm=batch,init_scale={s}" for s in SEED004_SCALES],
                     [f"norm=none,init_scale={s}" for s in SEED004_SCALES], "val_acc")),
        Claim("dropout_train", "4", "Dropout (keep 0.25) keeps training accuracy lower",
              greater(("seed004_dropout", "dropout=0"), ("seed004_dropout", "dropout=0.75"), "train_acc")),
        Claim("dropout_val", "4", "…and validation accuracy higher than without dropout",
              greater(("seed004_dropout", "dropout=0.75"), ("seed004_dropout", "dropout=0"), "val_acc")),
        Claim("opennet_lr", "5.2", "LR 1e-3 is OpenNet's sweet spot (validation accuracy, averaged over the other "
              "settings)", best_level("seed004_opennet_grid", "val_acc", "lr", [0.001])),
        Claim("opennet_wd", "5.2", "Weight decay 1e-4 to 5e-4 gives the best accuracy",
              best_level("seed004_opennet_grid", "val_acc", "weight_decay", [0.0001, 0.0005])),
        Claim("opennet_kernels", "5.2", "Kernel sizes (5, 1) perform poorly; (3, 1) and (5, 3) do alike (the worst "
              "of the three)", best_level("seed004_opennet_grid", "val_acc", "model.kernels", [(5, 1)], worst=True)),
    ),
}
