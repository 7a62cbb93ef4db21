"""The Explore tab's teaching tools: the denoising timeline, forward noising and sweeps, each run through the
studio so its images are the ones a mode tab makes."""
