-- Create a namespace and its table from psql (what `curation ns create` does).
--
--   psql "$DATABASE_URL" -v name=locations -v prompt='Parse user input and return mentions of geographical locations.' -f sql/create_namespace.sql
--
-- curation_create_namespace() is installed by the migrations (curation db upgrade).
-- It checks the name (^[a-z][a-z0-9_]{0,39}$), inserts the namespace row and
-- creates the partition <name>_openai_chat_completion with its comments, in one
-- transaction; calling it again for an existing namespace changes nothing.

SELECT curation_create_namespace(:'name', NULLIF(:'prompt', ''), NULL) AS created;

-- Later changes of the short training prompt or the default base model:
--   UPDATE namespace SET training_system_prompt = '...', updated_at = now() WHERE name = 'locations';
--   UPDATE namespace SET base_model = 'gpt-4o-mini-2024-07-18', updated_at = now() WHERE name = 'locations';
