"""The adapters that put an MLS engine behind :class:`mls.engine.MlsEngine`.

One module per engine: :mod:`mls.engines.native` and :mod:`mls.engines.mlsrs` (imported
lazily by the client, since mls-rs is optional); :mod:`mls.engines.wire` holds the few
wire-format reads the client makes itself.
"""
