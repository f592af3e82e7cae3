"""Index: the shape library (add, remove, query), by concern.

* :mod:`.library`: :class:`~.library.Library`, the facade the CLI, the server and
  ``ftspl.api`` use; each verb is a module of its own: :mod:`.add` (``index add``
  and ``--shards``), :mod:`.merge`, :mod:`.remove`, :mod:`.reembed` (with its part
  files, :mod:`.reembed_parts`), :mod:`.reader` (queries) and :mod:`.verify`;
* :mod:`.pipeline`: the one write pipeline, plan -> render -> encode -> commit, with
  named records between the steps and swappable producers and sinks;
* :mod:`.store`: the SQLite store (schema, transactions, per-view codes) and the
  writer lock: the source of truth;
* :mod:`.ann`: the ANN interface, its backends and their registry;
* :mod:`.anncache`: the ANN file beside the store, caught up or rebuilt in one place;
* :mod:`.session`: one writer's turn (lock, store, claim, ANN, save);
  :mod:`.folder`: the files of an index folder; :mod:`.config`: :class:`~.config.IndexConfig`;
* :mod:`.shards`: the Parquet shard format that any engine can write.

Imports run one way, from the facade down to the store and the ANN backends; no
module here imports one that imports it back.
"""
