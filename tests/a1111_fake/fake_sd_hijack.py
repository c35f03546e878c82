"""modules.sd_hijack: only `model_hijack.embedding_db`, the embedding database, which starts
out watching the --embeddings-dir folder."""


class StableDiffusionModelHijack:
    def __init__(self):
        from modules import shared
        from modules.textual_inversion.textual_inversion import EmbeddingDatabase

        self.embedding_db = EmbeddingDatabase()
        self.embedding_db.add_embedding_dir(shared.cmd_opts.embeddings_dir)


model_hijack = None   # needs cmd_opts, so fake_webui.setup makes it
