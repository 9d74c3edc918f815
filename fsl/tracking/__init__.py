from fsl.tracking.wandb_offline import OfflineRun, find_offline_runs, iter_records, read_offline_run

__all__ = ["OfflineRun", "find_offline_runs", "iter_records", "read_offline_run"]
