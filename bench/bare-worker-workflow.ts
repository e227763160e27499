/** The worker-startup bench's baseline workflow: nothing at all. */
export async function noop(): Promise<void> {}
