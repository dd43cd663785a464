"""What every job runs on: the job runner and its exit statuses, the run folder and resume, torchrun ranks,
the console, FLOP counting, and the benchmark engine (multi-view test) that scoring and fine-tuning share."""
