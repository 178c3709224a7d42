"""Schema Registry support (the optional ``registry`` extra): Confluent wire format, subject naming
strategies, a registry client, and the input decoder / output serializer the pipeline uses
for INPUT_FORMAT and OUTPUT_FORMAT ``json_schema`` and ``avro``. See README, "Schema Registry".
"""
