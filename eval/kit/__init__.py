"""What every job runs on: the job runner and its exit statuses, the run folder and resume, torchrun ranks,
the runtime (precision, device, the copy to it), the console, FLOP counting, and the benchmark engine
(multi-view test) that scoring and fine-tuning share."""
