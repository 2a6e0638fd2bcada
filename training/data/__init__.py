"""Training data: manifest reading (`manifest`) apart from the synthetic data generator
(`synth`, with its `synth_render` drawing and `synth_captions` templates) and the
`clipserve data` command (`cli`). Import the module you need; this package imports nothing,
so `clipserve data synth` stays free of torch."""
