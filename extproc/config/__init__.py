"""The gateway configuration: `schema` (the models), `loading` (file → validated config),
`credentials` (provider keys) and `topology` (ids the renderer and the processor share)."""
