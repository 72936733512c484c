-- The API endpoint a request came through (chat.completions, completions, embeddings), for its routing record.
ALTER TABLE reservations ADD COLUMN endpoint text NOT NULL DEFAULT 'chat.completions';
