/** A reference to a secret: the only form in which a secret may appear in inputs, results or history. */
import { z } from 'zod';

export const secretRefSchema = z.union(
  [
    z.strictObject({ env: z.string().regex(/^[A-Z_][A-Z0-9_]*$/, 'expected an environment variable name') }),
    z.strictObject({ file: z.string().startsWith('/', 'expected an absolute path') }),
    z.strictObject({ store: z.string().regex(/^[a-z0-9][a-z0-9._/-]*$/, 'expected a secret store name') }),
  ],
  {
    error:
      'expected a secret reference ({ env: NAME }, { file: /abs/path } or { store: name }), never the secret itself',
  },
);

export type SecretRef = z.infer<typeof secretRefSchema>;
