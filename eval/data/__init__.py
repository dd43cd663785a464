"""What every job reads: video decoding, benchmark records and presets, test views, feature snippets,
training clips, synthetic clips and the embedded demo set."""
