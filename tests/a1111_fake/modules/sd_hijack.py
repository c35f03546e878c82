"""Fake of modules/sd_hijack.py: `model_hijack.embedding_db` on the embeddings folder."""


class StableDiffusionModelHijack:
    def __init__(self):
        import modules.textual_inversion.textual_inversion
        from modules import shared

        self.embedding_db = modules.textual_inversion.textual_inversion.EmbeddingDatabase()
        self.embedding_db.add_embedding_dir(shared.cmd_opts.embeddings_dir)


model_hijack = None   # made by fake_webui.setup once cmd_opts exist (the real one at import)
