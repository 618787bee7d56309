"""The only asyncpg user: migrations, named queries, batched writes."""
