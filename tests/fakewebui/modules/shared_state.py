import time

from modules import _standin


class State:
    skipped = False
    interrupted = False
    if _standin.at_least("1.8.0"):
        stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    processing_has_refined_job_count = False
    job_timestamp = '0'
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    current_image = None
    current_image_sampling_step = 0
    id_live_preview = 0
    textinfo = None
    time_start = None
    server_start = None

    def __init__(self):
        self.server_start = time.time()

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True

    if _standin.at_least("1.8.0"):
        def stop_generating(self):
            self.stopping_generation = True

    def do_set_current_image(self):
        """The live preview, decoded on the thread that asks (the progress API's, or sampling's with --medvram)."""
        if self.current_latent is None:
            return

        from modules import errors, sd_samplers_common, shared  # the real one: modules.sd_samplers (re-exports)

        try:
            if shared.opts.show_progress_grid:
                self.assign_current_image(sd_samplers_common.samples_to_image_grid(self.current_latent))
            else:
                self.assign_current_image(sd_samplers_common.sample_to_image(self.current_latent))

            self.current_image_sampling_step = self.sampling_step

        except Exception:
            # when switching models during genration, VAE would be on CPU, so creating an image will fail.
            # we silently ignore this error
            errors.record_exception()

    def assign_current_image(self, image):
        self.current_image = image
        self.id_live_preview += 1

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0
        self.current_image_sampling_step = 0

    def begin(self, job: str = "(unknown)"):
        self.sampling_step = 0
        self.job_count = -1
        self.job_no = 0
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.job = job
        self.time_start = time.time()

    def end(self):
        self.job = ""
        self.job_count = 0
