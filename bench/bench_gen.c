/* bench_gen: writes a JSONL knowledge base for the benchmarks: N records of
 * {"id", "text" (~300 bytes), "metadata", "embedding" (dim floats printed
 * with 17 significant digits, as Python's json.dumps does)}. The embeddings
 * are synthetic (bench_common.h), not a model's.
 * usage: bench_gen OUT.jsonl [N=100000] [dim=384] [seed=1] */
#include "bench_common.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_gen OUT.jsonl [N] [dim] [seed]\n");
        return 2;
    }
    long n = argc > 2 ? atol(argv[2]) : 100000;
    int dim = argc > 3 ? atoi(argv[3]) : 384;
    uint64_t seed = argc > 4 ? (uint64_t)atoll(argv[4]) : 1;
    FILE *f = fopen(argv[1], "w");
    if (!f || dim <= 0 || n < 0) {
        perror(argv[1]);
        return 1;
    }
    static char buf[1 << 16];
    setvbuf(f, buf, _IOFBF, sizeof buf);
    float *v = malloc(sizeof(float) * (size_t)dim);
    char text[400];
    for (long i = 0; i < n; i++) {
        bench_vector(seed, (uint64_t)i, dim, v);
        bench_text((uint64_t)i, text, 300);
        fprintf(f,
                "{\"id\": \"doc-%ld\", \"text\": \"%s\", \"metadata\": "
                "{\"source\": \"bench\", \"n\": %ld}, \"embedding\": [",
                i, text, i);
        for (int j = 0; j < dim; j++)
            fprintf(f, j ? ", %.17g" : "%.17g", (double)v[j]);
        fputs("]}\n", f);
    }
    free(v);
    return fclose(f) ? 1 : 0;
}
